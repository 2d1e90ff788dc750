//! `template`: a Handlebars file beside the playbook, rendered with the host's vars and
//! written as [`super::copy`] writes (sha256-compared, atomic, never through a link).
//!
//! ```toml
//! [task.template]
//! src = "templates/app.conf.hbs"  # relative to the playbook (or task file)
//! dest = "/etc/app/app.conf"
//! mode = "0644"                   # optional; owner, group, backup as copy's
//! ```
//!
//! Rendering is strict, and done for every host before anything is contacted: an
//! undefined variable or a syntax error is an error naming the template file, line and
//! column (exit 4). Values are written as they are (this is a file, not a command line:
//! nothing is quoted or escaped). `--diff` shows the unified diff of the file.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::copy::{self, CopyChange, CopyFacts, Mode};
use crate::module::{Applied, ArgCheck, ArgError, Module, ModuleError, Probe, TaskCtx};
use crate::playbook::source::SourceFile;
use crate::playbook::template::{Renderer, Template, Vars};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    pub src: Template,
    pub dest: Template,
    pub mode: Option<Mode>,
    pub owner: Option<Template>,
    pub group: Option<Template>,
    #[serde(default)]
    pub backup: bool,
}

/// Read the template file at `path` and render it with `vars`; an error says where in
/// the file (`path:line:column: message`).
pub fn render_file(path: &std::path::Path, vars: &Vars) -> Result<String, String> {
    let file = SourceFile::read(path).map_err(|e| e.to_string())?;
    let text = file.text.clone();
    let renderer = Renderer::new(Some(Arc::new(file)));
    let template = Template::located(text.clone(), 0..text.len());
    renderer.render(&template, vars).map_err(|e| {
        let at = e
            .location
            .map(|l| format!("{l}: "))
            .unwrap_or_else(|| format!("{}: ", path.display()));
        format!("{at}{}", e.message)
    })
}

#[async_trait]
impl Module for TemplateFile {
    type Facts = CopyFacts;
    type Change = CopyChange;

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        let src = at.render(&self.src)?;
        let path = copy::local_path(at.base_dir, &src);
        render_file(&path, at.vars)
            .map(drop)
            .map_err(|e| ArgError::template(&self.src, e))
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<CopyFacts, ModuleError> {
        let dest = probe.render_operand(&self.dest)?;
        let path = copy::local_path(&probe.base_dir, &probe.render(&self.src)?);
        let text = render_file(&path, &probe.vars).map_err(ModuleError::Precondition)?;
        let attrs = copy::render_attrs(probe, self.mode, &self.owner, &self.group)?;
        Ok(CopyFacts {
            dest: copy::dest_facts(probe, &dest).await?,
            wanted: copy::wanted_text(dest, text, attrs, self.backup),
        })
    }

    fn decide(&self, facts: &CopyFacts) -> Result<Vec<CopyChange>, ModuleError> {
        copy::decide_write(&facts.wanted, &facts.dest)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &CopyFacts,
        changes: &[CopyChange],
    ) -> Result<Applied, ModuleError> {
        copy::apply_writes(ctx, changes).await
    }
}
