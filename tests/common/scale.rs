//! The many-host inventory and playbook that `tests/scale_inventory.rs` and
//! `benches/inventory_scale.rs` both resolve (one definition, so the test guards what
//! the benchmark measures).

/// An inventory of `hosts` hosts in 4 groups, each with 10 variables of its own.
pub fn inventory_text(hosts: usize) -> String {
    let mut text =
        String::from("[defaults]\nuser = \"root\"\n[defaults.vars]\ndata_dir = \"/srv/data\"\n");
    for i in 0..hosts {
        text.push_str(&format!(
            "[hosts.h{i:04}]\naddress = \"10.0.{}.{}\"\ngroups = [\"g{}\"]\n[hosts.h{i:04}.vars]\n",
            i / 250,
            i % 250,
            i % 4
        ));
        for v in 0..10 {
            text.push_str(&format!("v{v} = \"value {v} of host {i}, some text\"\n"));
        }
    }
    for g in 0..4 {
        text.push_str(&format!("[groups.g{g}.vars]\ngroup_value = \"g{g}\"\n"));
    }
    text
}

/// A task on every host and one that reads another host's and a group's variables.
pub const PLAYBOOK: &str = r#"
[[task]]
name = "on every host"
hosts = "all"
when = "{{ data_dir }}"
[task.command]
cmd = "test -d {{ data_dir }} {{ v3 }}"

[[task]]
name = "reads another host"
hosts = "h0001"
[task.command]
cmd = "echo {{ hostvars.h0000.v1 }} {{ groups.g0.[0] }}"
"#;
