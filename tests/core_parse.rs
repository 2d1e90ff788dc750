use ferry::playbook::Playbook;
use std::path::Path;
#[test]
fn show() {
    for f in std::fs::read_dir("tests/fixtures/playbooks").unwrap() {
        let p = f.unwrap().path();
        match Playbook::load(&p) {
            Ok(pb) => println!("{}: ok {} tasks", p.display(), pb.tasks.len()),
            Err(e) => println!("{e}"),
        }
    }
    let _ = Path::new("x");
}
