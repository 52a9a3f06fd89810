//! Control path: the policy and bypass state the kernel enforces. Compiles
//! rule sets into the kernel's policy maps, swaps them atomically on reload,
//! and turns bypass changes into audit (`overseer`) records.

mod bypass;
mod compile;
mod controller;
mod reapply;
mod rules;
mod slots;

pub use bypass::{request_bypass, BypassRequest, BypassWatcher};
pub use compile::{compile, load_policy, TooManyRules, KERNEL_LIMITS, RESERVED_SLOTS};
pub use controller::{Directory, PolicyController, Targets};
pub use reapply::Reapply;
pub use rules::{KernelRuleSet, Placed, RuleSetWriter};
