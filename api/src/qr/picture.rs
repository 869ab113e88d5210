//! QR images for `/qr/loginpic` (owned by the picture helper; placeholder).
