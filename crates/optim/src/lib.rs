//! loraplus-optim
