//! `Session::files` for a library user: the session's working directory written and read from
//! the host while its code uses the same files, and a symlink the code plants to lead out
//! refused.

mod common;

use common::{eval, start};
use pyrepl3::FilesError;

#[tokio::test]
async fn a_library_user_shares_files_with_the_sessions_code() {
    let session = start().await;
    let files = session.files();
    let written = files
        .write("in/data.txt", &b"from the host"[..], None)
        .await
        .unwrap();
    assert_eq!((written.path.as_str(), written.size), ("in/data.txt", 13));
    assert_eq!(
        eval(&session, "open('in/data.txt').read()")
            .await
            .as_deref(),
        Some("'from the host'")
    );
    eval(
        &session,
        "import os\nopen('out.txt', 'w').write('from the code')\nos.symlink('/etc', 'hostetc')",
    )
    .await;
    assert_eq!(files.read("out.txt").await.unwrap(), b"from the code");
    let listing = files.list("").await.unwrap();
    let names: Vec<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["hostetc", "in", "out.txt"]);
    let refused = files.open("hostetc/passwd").await.unwrap_err();
    assert!(matches!(refused, FilesError::BadPath { .. }), "{refused:?}");
    // The worker's restart keeps the directory.
    session.restart().await.unwrap();
    assert_eq!(
        eval(&session, "open('out.txt').read()").await.as_deref(),
        Some("'from the code'")
    );
    files.remove("in", true).await.unwrap();
    assert_eq!(
        eval(&session, "import os\nos.path.exists('in')")
            .await
            .as_deref(),
        Some("False")
    );
    session.shutdown().await.unwrap();
}
