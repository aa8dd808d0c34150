//! `--help`: the commands and their flags.

use crate::helpers::*;

#[test]
fn help_names_the_commands_and_flags() {
    let help = |args: &[&str]| {
        let mut cmd = quotad();
        cmd.args(args);
        let out = run(cmd, COMMAND_TIMEOUT);
        succeeded(&out);
        stdout_of(&out)
    };
    let top = help(&["--help"]);
    for word in ["serve", "grpc", "edge", "migrate", "token"] {
        assert!(top.contains(word), "quotad --help lacks {word}:\n{top}");
    }
    let serve = help(&["serve", "--help"]);
    for flag in [
        "--database-url",
        "--grpc-addr",
        "--http-addr",
        "--admin-token",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}:\n{serve}");
    }
    let migrate = help(&["migrate", "--help"]);
    assert!(migrate.contains("--database-url"), "{migrate}");
    let create = help(&["token", "create", "--help"]);
    for flag in [
        "--quota-usd",
        "--quota ",
        "--unlimited",
        "--expires-at",
        "--name",
        "--server",
    ] {
        assert!(
            create.contains(flag),
            "token create --help lacks {flag}:\n{create}"
        );
    }
}
