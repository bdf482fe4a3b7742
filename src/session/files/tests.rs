//! `SessionFiles` on a temporary directory: the path rules (symlinks planted to lead out
//! included), the size limits leaving nothing behind, listing bounds, removal.

use super::*;

fn files_in(dir: &tempfile::TempDir) -> SessionFiles {
    SessionFiles::new(dir.path())
}

/// Every name in the directory, temporary files included.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_write_makes_its_parents_and_reads_back_and_a_second_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir);
    let written = files
        .write("a/./b//c.txt", &b"hello"[..], None)
        .await
        .unwrap();
    assert_eq!(
        (written.path.as_str(), written.size, written.created),
        ("a/b/c.txt", 5, true)
    );
    assert_eq!(files.read("a/b/c.txt").await.unwrap(), b"hello");
    let again = files.write("a/b/c.txt", &b"bye"[..], None).await.unwrap();
    assert!(!again.created, "replaced");
    assert_eq!(std::fs::read(dir.path().join("a/b/c.txt")).unwrap(), b"bye");
    assert_eq!(
        names(&dir.path().join("a/b")),
        ["c.txt"],
        "no temporary file is left"
    );
}

#[tokio::test]
async fn lexical_escapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir);
    for path in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a\0b",
        "",
        ".pyrepl3-upload-x",
    ] {
        let refused = files.write(path, &b"x"[..], None).await.unwrap_err();
        assert!(
            matches!(refused, FilesError::BadPath { .. }),
            "{path:?}: {refused:?}"
        );
    }
    assert!(matches!(
        files.open("../etc/passwd").await.unwrap_err(),
        FilesError::BadPath { .. }
    ));
    assert!(matches!(
        files.list("..").await.unwrap_err(),
        FilesError::BadPath { .. }
    ));
    assert!(matches!(
        files.remove("", true).await.unwrap_err(),
        FilesError::BadPath { .. }
    ));
}

#[tokio::test]
async fn symlinks_that_lead_out_are_refused_and_those_inside_are_followed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir);
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    std::os::unix::fs::symlink("..", dir.path().join("up")).unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/inside"), "in").unwrap();
    std::os::unix::fs::symlink("d", dir.path().join("alias")).unwrap();
    for path in ["out/secret", "up/x", "out"] {
        let refused = files.open(path).await.unwrap_err();
        assert!(
            matches!(refused, FilesError::BadPath { .. }),
            "{path}: {refused:?}"
        );
    }
    let refused = files
        .write("out/planted", &b"x"[..], None)
        .await
        .unwrap_err();
    assert!(matches!(refused, FilesError::BadPath { .. }), "{refused:?}");
    assert!(!outside.path().join("planted").exists());
    let refused = files.list("out").await.unwrap_err();
    assert!(matches!(refused, FilesError::BadPath { .. }), "{refused:?}");
    let refused = files.remove("out/secret", false).await.unwrap_err();
    assert!(matches!(refused, FilesError::BadPath { .. }), "{refused:?}");
    assert!(outside.path().join("secret").exists());
    assert_eq!(files.read("alias/inside").await.unwrap(), b"in");
    // Removing the link removes the link, not what it points to.
    files.remove("out", false).await.unwrap();
    assert!(outside.path().join("secret").exists());
}

#[tokio::test]
async fn size_limits_refuse_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir).with_limits(FileLimits {
        max_file_bytes: 1000,
        max_session_bytes: 1500,
        max_list_entries: 10,
    });
    let too_big = vec![7u8; 1001];
    let refused = files.write("big", &too_big[..], None).await.unwrap_err();
    assert!(
        matches!(refused, FilesError::FileTooLarge { size: None, .. }),
        "{refused:?}"
    );
    let refused = files.write("big", &b""[..], Some(5000)).await.unwrap_err();
    assert!(
        matches!(
            refused,
            FilesError::FileTooLarge {
                size: Some(5000),
                ..
            }
        ),
        "{refused:?}"
    );
    files.write("a", &vec![1u8; 1000][..], None).await.unwrap();
    let refused = files
        .write("b", &vec![1u8; 600][..], None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, FilesError::SessionFull { used: 1600, .. }),
        "{refused:?}"
    );
    // Replacing a file counts its new size, not both.
    files.write("a", &vec![2u8; 900][..], None).await.unwrap();
    assert_eq!(names(dir.path()), ["a"]);
}

#[tokio::test]
async fn a_write_whose_source_fails_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir);
    struct Failing(bool);
    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.0 {
                return std::task::Poll::Ready(Err(io::Error::other("cut off")));
            }
            self.0 = true;
            buf.put_slice(&[1; 100]);
            std::task::Poll::Ready(Ok(()))
        }
    }
    let refused = files.write("part", Failing(false), None).await.unwrap_err();
    assert!(
        matches!(refused, FilesError::SourceFailed { .. }),
        "{refused:?}"
    );
    // Removed before the error is returned.
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}

#[tokio::test]
async fn listing_is_sorted_typed_and_bounded_and_removal_follows_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir).with_limits(FileLimits {
        max_list_entries: 3,
        ..FileLimits::default()
    });
    files.write("b.txt", &b"12"[..], None).await.unwrap();
    files.write("sub/x", &b"1"[..], None).await.unwrap();
    std::os::unix::fs::symlink("b.txt", dir.path().join("a-link")).unwrap();
    let listing = files.list("").await.unwrap();
    let shown: Vec<(&str, EntryType)> = listing
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    assert_eq!(
        shown,
        [
            ("a-link", EntryType::Symlink),
            ("b.txt", EntryType::File),
            ("sub", EntryType::Directory)
        ]
    );
    assert!(!listing.truncated);
    assert_eq!(listing.entries[1].size, 2);
    assert!(listing.entries[1].mtime > 1.0e9);
    files.write("c", &b""[..], None).await.unwrap();
    let listing = files.list("").await.unwrap();
    assert_eq!((listing.entries.len(), listing.truncated), (3, true));
    assert!(matches!(
        files.list("b.txt").await.unwrap_err(),
        FilesError::NotADirectory { .. }
    ));
    assert!(matches!(
        files.open("sub").await.unwrap_err(),
        FilesError::IsADirectory { .. }
    ));
    assert!(matches!(
        files.remove("sub", false).await.unwrap_err(),
        FilesError::DirectoryNotEmpty { .. }
    ));
    files.remove("sub", true).await.unwrap();
    assert!(matches!(
        files.remove("sub", true).await.unwrap_err(),
        FilesError::NotFound { .. }
    ));
}

#[tokio::test]
async fn writes_under_way_count_together_against_the_session_limit() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let files = files_in(&dir).with_limits(FileLimits {
        max_file_bytes: 1000,
        max_session_bytes: 1000,
        max_list_entries: 10,
    });
    // The first write takes 600 bytes and waits for more: once the duplex has room for the
    // next byte, the writer (on this same thread) has read and counted them.
    let (mut feed, source) = tokio::io::duplex(600);
    let first = tokio::spawn({
        let files = files.clone();
        async move { files.write("first", source, None).await }
    });
    feed.write_all(&[1; 600]).await.unwrap();
    feed.write_all(&[1]).await.unwrap();
    let refused = files
        .write("second", &[2u8; 600][..], None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, FilesError::SessionFull { .. }),
        "{refused:?}"
    );
    drop(feed);
    let written = first.await.unwrap().unwrap();
    assert_eq!(written.size, 601);
    // Finished, it counts as a file of the directory: 399 more fit, 400 do not.
    files.write("third", &[3u8; 399][..], None).await.unwrap();
    let refused = files
        .write("fourth", &[4u8; 1][..], None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, FilesError::SessionFull { used: 1001, .. }),
        "{refused:?}"
    );
    assert_eq!(names(dir.path()), ["first", "third"]);
}
