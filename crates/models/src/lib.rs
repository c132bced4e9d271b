//! loraplus-models
