use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vars {
    let map = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    Vars::new(map, &Secrets::new())
}

#[test]
fn shell_values_are_quoted_by_construction() {
    let r = Renderer::new(None);
    let cmd = r
        .render_shell(
            &ShellTemplate::new("test -d {{ dir }}"),
            &vars(&[("dir", "a'; rm -rf / #")]),
        )
        .unwrap();
    assert_eq!(
        sh_words(&cmd.to_shell()),
        vec!["test", "-d", "a'; rm -rf / #"]
    );
}

/// How a real POSIX shell splits a command line into words.
fn sh_words(line: &str) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("for w in {line}; do printf '%s\\0' \"$w\"; done"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(String::from)
        .collect()
}

#[test]
fn plain_templates_are_not_escaped_and_quote_helper_quotes_once() {
    let r = Renderer::new(None);
    let v = vars(&[("x", "a b&<")]);
    assert_eq!(r.render(&Template::new("{{x}}"), &v).unwrap(), "a b&<");
    assert_eq!(
        r.render(&Template::new("{{quote x}}"), &v).unwrap(),
        "'a b&<'"
    );
    let cmd = r
        .render_shell(&ShellTemplate::new("echo {{quote x}}"), &v)
        .unwrap();
    assert_eq!(cmd.to_shell(), "echo 'a b&<'");
}

#[test]
fn undefined_variables_are_errors_naming_the_variable() {
    let r = Renderer::new(None);
    let e = r
        .render(&Template::new("x {{ nope }}"), &vars(&[]))
        .unwrap_err();
    assert_eq!(e.variable.as_deref(), Some("nope"));
    // `#if` is how a template asks whether a variable exists, so it is allowed.
    assert_eq!(
        r.render(&Template::new("{{#if nope}}y{{/if}}"), &vars(&[]))
            .unwrap(),
        ""
    );
    let e = r
        .render(&Template::new("{{quote nope}}"), &vars(&[]))
        .unwrap_err();
    assert_eq!(e.variable.as_deref(), Some("nope"));
}

#[test]
fn raw_and_self_quoted_interpolation_is_refused() {
    let r = Renderer::new(None);
    let v = vars(&[("x", "1")]);
    assert!(r
        .render_shell(&ShellTemplate::new("echo {{{x}}}"), &v)
        .is_err());
    assert!(r
        .render_shell(&ShellTemplate::new("echo {{&x}}"), &v)
        .is_err());
    assert!(r
        .render_shell(&ShellTemplate::new("echo '{{x}}'"), &v)
        .is_err());
}

/// Every spelling Handlebars accepts for an unescaped expression.
const RAW_SPELLINGS: &[&str] = &[
    "echo {{{x}}}",
    "echo {{{ x }}}",
    "echo {{&x}}",
    "echo {{ &x }}",
    "echo {{~&x~}}",
    "echo {{~{x}~}}",
    "echo {{ {x} }}",
    "echo {{~ {x} ~}}",
    "{{#if x}}echo {{ &x }}{{/if}}",
    "{{#if x}}true{{else}}echo {{ {x} }}{{/if}}",
];

#[test]
fn raw_output_is_refused_whatever_its_spelling() {
    let r = Renderer::new(None);
    let v = vars(&[("x", "a; echo INJECTED")]);
    for source in RAW_SPELLINGS {
        let e = r
            .render_shell(&ShellTemplate::new(*source), &v)
            .expect_err(source);
        assert!(e.message.contains("raw interpolation"), "{source}: {e}");
    }
}

#[test]
fn values_where_quoting_cannot_protect_them_are_refused() {
    let r = Renderer::new(None);
    let v = vars(&[("x", "PATH=/tmp/evil"), ("y", "1")]);
    let refused: &[(&str, &str)] = &[
        ("echo \"{{x}}\"", "double quotes"),
        ("echo \"a {{x}} b\"", "double quotes"),
        ("echo '{{x}}'", "single quotes"),
        ("echo 'a {{x}}'", "single quotes"),
        ("cat <<EOF\n{{x}}\nEOF", "here-document"),
        ("cat <<'EOF'\nline {{x}}\nEOF", "here-document"),
        ("cat <<-EOF\n\tok\n\t{{x}}\n\tEOF", "here-document"),
        ("cat <<{{x}}\nEOF", "here-document"),
        ("echo hi # {{x}}", "comment"),
        ("echo hi\n# note {{x}}", "comment"),
        ("{{x}} ls", "command position"),
        ("{{x}}", "command position"),
        ("  {{x}}", "command position"),
        ("true; {{x}} ls", "command position"),
        ("true && {{x}}", "command position"),
        ("echo a | {{x}}", "command position"),
        ("true\n{{x}} ls", "command position"),
        ("FOO=1 {{x}} ls", "command position"),
        ("if {{x}}; then :; fi", "command position"),
        ("(cd / && {{x}})", "command position"),
        ("echo $({{x}})", "command position"),
        ("> /tmp/f {{x}}", "command position"),
        ("{{y}}=1 ls", "command position"),
        ("pre{{x}} ls", "command position"),
        ("echo `ls {{x}}`", "backquotes"),
        ("echo ${A:-{{x}}}", "${"),
        ("echo $(( {{y}} + 1 ))", "arithmetic"),
        ("echo \\\\{{x}}", "backslash"),
        ("echo \"$(ls {{x}})\" \"{{x}}\"", "double quotes"),
        ("{{#if y}}echo \"{{/if}}{{x}}{{#if y}}\"{{/if}}", "block"),
        ("echo {{> partial}}", "partial"),
    ];
    for (source, says) in refused {
        let e = r
            .render_shell(&ShellTemplate::new(*source), &v)
            .expect_err(source);
        assert!(e.message.contains(says), "{source:?}: {e}");
    }
    let allowed = [
        "test -d {{x}}",
        "touch {{x}}/marker",
        "ls --dir={{x}}",
        "echo a{{x}}b",
        "FOO={{x}} ls {{y}}",
        "export FOO={{x}}",
        "cat <<EOF\nhi # $HOME\nEOF\necho {{x}}",
        "cat <<'EOF' | grep -q a\nquoted ' \" $(x)\nEOF\necho {{x}}",
        "echo \"quoted # text\" {{x}}",
        "echo '#' {{x}} # trailing comment",
        "echo a#b {{x}}",
        "printf '%s\\n' {{x}} > {{y}}",
        "echo $(basename {{x}}) \"$(basename {{x}})\"",
        "echo {{x}} 2>&1 >/dev/null",
        "> /tmp/f echo {{x}}",
        "if test -n {{x}}; then echo {{y}}; fi",
        "for f in {{x}} {{y}}; do echo \"$f\"; done",
        "echo {{#if y}}--flag {{/if}}{{x}}",
        "echo {{#each l}}{{this}} {{/each}}",
        "echo {{quote x}}",
        "echo \\{{x}}",
        "{{! a comment }}echo {{x}}",
    ];
    for source in allowed {
        if let Err(e) = check_shell_source(source) {
            panic!("{source:?} was refused: {e}");
        }
    }
}

#[test]
fn refusals_point_at_the_interpolation() {
    let e = check_shell_source("true\necho \"{{ x }}\"").unwrap_err();
    assert_eq!(e.position, Some((2, 7)), "{e:?}");
    let e = check_shell_source("echo {{ &x }}").unwrap_err();
    assert_eq!(e.position, Some((1, 6)), "{e:?}");
}

#[test]
fn nul_bytes_are_errors_not_dropped() {
    let r = Renderer::new(None);
    let v = vars(&[("x", "a\0b")]);
    let e = r
        .render_shell(&ShellTemplate::new("echo {{x}}"), &v)
        .unwrap_err();
    assert!(e.message.contains("NUL"), "{e}");
    let e = r.render(&Template::new("{{x}}"), &v).unwrap_err();
    assert!(e.message.contains("NUL"), "{e}");
}

#[test]
fn secrets_are_masked_in_display() {
    let secrets = Secrets::new();
    secrets.add("s3cr et");
    let map = [("pw".to_string(), Value::String("s3cr et".into()))]
        .into_iter()
        .collect();
    let v = Vars::new(map, &secrets);
    let cmd = Renderer::new(None)
        .render_shell(&ShellTemplate::new("login --password {{pw}}"), &v)
        .unwrap();
    assert_eq!(cmd.to_shell(), "login --password 's3cr et'");
    assert_eq!(cmd.display(), "login --password '********'");
}

#[test]
fn truthiness() {
    let r = Renderer::new(None);
    let v = vars(&[("a", "yes"), ("b", "false")]);
    assert!(r.truthy(&Template::new("{{a}}"), &v).unwrap());
    assert!(!r.truthy(&Template::new("{{b}}"), &v).unwrap());
    assert!(!r.truthy(&Template::new(" "), &v).unwrap());
}
