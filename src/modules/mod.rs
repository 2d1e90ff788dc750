//! (to be written)
pub mod redis_layout;
