//! QR-code login (placeholder).

pub mod picture;
