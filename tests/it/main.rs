//! Integration tests of the `latch` package: real Postgres (a fresh database per test), a
//! private nats-server per test, real HTTP.

mod audit;
mod browser;
mod common;
mod crash;
mod dev;
mod dev_auth;
mod devices_api;
mod docs;
mod edge_site;
mod event_store;
mod facts;
mod grant_feed;
mod kazaya;
mod kiosk_pages;
mod limits;
mod locker_history;
mod locker_pages;
mod locker_process;
mod lockers;
mod metrics;
mod nats_auth;
mod nats_cluster;
mod nats_identities;
mod openapi;
mod outages;
mod qr_api;
mod qr_pages;
mod relay;
mod revoke;
mod secrets;
mod snapshots;
mod telemetry;
mod tls;
mod vending;
mod vending_pages;
