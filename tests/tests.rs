//! Integration tests: the real broker, the real ONNX Runtime, real files. `scripts/test.sh` installs and starts what
//! they need; tests are named after the issue they settle (`r2_...`).

mod adversarial;
mod api;
mod archive;
mod compaction;
mod config;
mod docs;
mod embeddings;
mod faults;
mod layout;
mod model;
mod page;
mod pipeline;
mod refine;
mod retention;
mod season;
mod security;
mod support;
