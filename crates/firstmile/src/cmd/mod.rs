pub mod geo;
pub mod sim;
