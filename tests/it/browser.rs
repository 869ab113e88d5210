//! Driving real headless Chromium (placeholder).
