//! loraplus-train
