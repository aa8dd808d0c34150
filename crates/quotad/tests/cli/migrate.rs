//! `quotad migrate`.

use crate::helpers::*;

#[test]
fn migrate_creates_the_sqlite_file_and_is_idempotent() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("m.db");
    for _ in 0..2 {
        let mut cmd = quotad();
        cmd.args(["migrate", "--database-url", &url])
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        succeeded(&out);
        assert!(
            stderr_of(&out).contains("migrations applied"),
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
