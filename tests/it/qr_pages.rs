//! QR login pages end to end in headless Chromium (placeholder).
