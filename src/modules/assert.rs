//! `assert`: fail the task unless a condition holds; changes nothing.
//!
//! ```toml
//! [task.assert]
//! that = "{{ app_version_ok }}"   # rendered; "", false, no, off, 0 fail
//! msg = "the app must be at least 1.12.10"
//! ```

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::module::{Applied, Change, Module, ModuleError, Probe, TaskCtx};
use crate::playbook::template::Template;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assert {
    pub that: Template,
    pub msg: Option<Template>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssertFacts {
    pub holds: bool,
    pub msg: String,
}

/// `assert` never plans a change.
#[derive(Debug, Clone, Serialize)]
pub enum NoChange {}

impl Change for NoChange {
    fn describe(&self) -> String {
        match *self {}
    }
}

#[async_trait]
impl Module for Assert {
    type Facts = AssertFacts;
    type Change = NoChange;
    const TEXT_FIELDS: &'static [&'static str] = &["that", "msg"];

    async fn facts(&self, probe: &Probe<'_>) -> Result<AssertFacts, ModuleError> {
        let holds = probe.renderer.truthy(&self.that, &probe.vars)?;
        let msg = match &self.msg {
            Some(m) => probe.render(m)?,
            None => format!("assertion failed: {}", self.that.source()),
        };
        Ok(AssertFacts { holds, msg })
    }

    fn decide(&self, facts: &AssertFacts) -> Result<Vec<NoChange>, ModuleError> {
        if facts.holds {
            Ok(Vec::new())
        } else {
            Err(ModuleError::Failed(facts.msg.clone()))
        }
    }

    async fn apply(
        &self,
        _: &TaskCtx,
        _: &AssertFacts,
        _: &[NoChange],
    ) -> Result<Applied, ModuleError> {
        Ok(Applied::default())
    }
}
