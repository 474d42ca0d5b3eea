pub mod entry;
pub mod geo;
pub mod sim;
pub mod up;
