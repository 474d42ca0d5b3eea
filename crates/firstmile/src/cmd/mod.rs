pub mod director;
pub mod entry;
pub mod geo;
pub mod keygen;
pub mod sim;
pub mod up;
