//! `quotad migrate`.

use crate::helpers::*;

#[test]
fn migrate_creates_the_sqlite_file_and_is_idempotent() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("m.db");
    for _ in 0..2 {
        let mut cmd = quotad();
        // The default filter of log lines, as an operator gets it.
        cmd.args(["migrate", "--database-url", &url])
            .env_remove("QUOTA_LOG")
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        succeeded(&out);
        assert!(
            stderr_of(&out).contains("migrations applied"),
            "{}",
            describe(&out)
        );
        // Each migration is said once, by quota, not again by the library.
        assert!(
            !stderr_of(&out).contains("sea_orm_migration"),
            "{}",
            describe(&out)
        );
        assert!(dir.path().join("m.db").is_file());
    }
    assert!(
        !dir.path().join("quota.db").exists(),
        "the default database was created"
    );
}

#[test]
fn status_of_a_database_that_cannot_be_read_exits_2_apart_from_pending() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("junk.db"), "not a database").unwrap();
    let mut cmd = quotad();
    cmd.args(["migrate", "--status", "--database-url"])
        .arg(dir.sqlite_url("junk.db"))
        .current_dir(dir.path());
    let out = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let line = stderr_of(&out);
    assert_eq!(line.lines().count(), 1, "{}", describe(&out));
    assert!(line.contains("junk.db"), "{line}");
    assert_eq!(stdout_of(&out), "");
}

#[test]
fn off_refuses_a_sqlite_file_not_made_yet_and_creates_nothing() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.args(["grpc", "--migrate=off", "--grpc-addr", "127.0.0.1:0"])
        .args(["--database-url", &dir.sqlite_url("fresh.db")])
        .current_dir(dir.path());
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert!(
        line.contains("does not exist") && line.contains("quotad migrate"),
        "{line}"
    );
    assert!(
        !dir.path().join("fresh.db").exists(),
        "--migrate=off made the file"
    );
}

#[test]
fn status_of_a_sqlite_file_not_made_yet_lists_all_pending_and_creates_nothing() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("fresh.db");
    let mut cmd = quotad();
    cmd.args(["migrate", "--status", "--database-url", &url])
        .current_dir(dir.path());
    let out = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let names = quota_service::store::migration_names();
    let listed = stdout_of(&out);
    for name in &names {
        assert!(listed.contains(&format!("pending  {name}\n")), "{listed}");
    }
    assert!(
        listed.ends_with(&format!("0 applied, {} pending\n", names.len())),
        "{listed}"
    );
    assert!(
        !dir.path().join("fresh.db").exists(),
        "--status made the file"
    );
    assert!(
        !dir.path().join("quota.db").exists(),
        "the default database was made"
    );
}
