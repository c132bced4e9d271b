//! loraplus-data
