//! Key <-> path mapping: every relative key of an area is one file under the area directory
//! and back, checkout-safe on Linux and macOS. The scheme is written down in docs/mapping.md.

mod assemble;
mod bulk;
mod component;
mod decode;
mod error;
mod escape;
mod layout;
mod listing;
mod lookup;
mod name;
mod plan;

#[cfg(test)]
mod doc_examples;

pub use bulk::BulkKeys;
pub use component::{components, Component};
pub use decode::{decode_path, decode_paths, decode_paths_lenient};
pub use error::{MapError, NameProblem, PlanError};
pub use escape::{EMPTY_NAME, MAX_ESCAPED};
pub use layout::layout_all;
pub use lookup::{lookup, Locator};
pub use name::{CONTINUATION_SUFFIX, SELF_NAME};
pub use plan::{plan_changes, plan_changes_with};
