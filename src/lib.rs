//! `latch`: the process that runs Latch.
//!
//! The domain, read side, API and workers live in their own crates (`latch-domain`,
//! `latch-projections`, `latch-api`, `latch-workers`, `latch-nats`); this crate wires them into
//! one [`app::Application`] and provides the command-line tools around it:
//! [`sim`] (simulated cabinets), [`authorizer_sandbox`] (a courier company as a third-party
//! authorizer), [`dev`] (the one-command demo), [`bench`], [`bench_qr`],
//! [`bench_vending`], [`bench_audit`], [`bench_lockers`] and [`bench_failover`] (measurements), [`audit_cli`] (replay, verify, checkpoints, rebuilds),
//! [`production`] (what `LATCH_ENV=production` refuses to start on).

pub mod app;
pub mod audit_cli;
pub mod authorizer_sandbox;
pub mod bench;
pub mod bench_audit;
pub mod bench_cpu;
pub mod bench_failover;
pub mod bench_lockers;
pub mod bench_qr;
pub mod bench_soak;
pub mod bench_streams;
pub mod bench_vending;
pub mod config;
pub mod dev;
pub mod dev_nats;
pub mod kazaya_sandbox;
pub mod production;
pub mod serve;
pub mod sim;
pub mod telemetry;

pub use app::Application;
pub use config::Settings;
