//! End-to-end tests: the real CLI against small fixture programs.

mod common;

mod bad_input;
mod faults;
mod hydra_app;
mod hygiene;
mod output;
mod seed;
mod slurm;
mod spill;
mod sweeps;
mod warm;
