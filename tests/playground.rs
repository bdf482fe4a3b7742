//! The playground page (`GET /`): served without a token with its assets (the right types,
//! a Content-Security-Policy without inline scripts), and used in headless Chromium as a
//! person would (tests/browser/playground.test.mjs, driven by playwright-core): code with
//! `input()` and a matplotlib plot, an HTML display kept out of the page, Cancel.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::npm::{npm_ci, repo_dir, run};
use common::server::{spawn_server, ALICE};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Chromium's start and the session's first plot (matplotlib builds its font cache).
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_token_with_their_types() {
    let (mut server, base) = spawn_server(&["--min-idle", "0"]);
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let script_src: Vec<&str> = csp
        .split(';')
        .map(str::trim)
        .filter(|d| d.starts_with("script-src"))
        .collect();
    assert_eq!(script_src, ["script-src 'self'"], "{csp}");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/playground.js"></script>"#));
    assert!(!html.contains("<script>"), "no inline script");

    for (path, content_type, needle) in [
        (
            "/ui/playground.js",
            "text/javascript; charset=utf-8",
            "/ui/client/index.js",
        ),
        ("/ui/playground.css", "text/css; charset=utf-8", "#output"),
        (
            "/ui/client/index.js",
            "text/javascript; charset=utf-8",
            "./client.js",
        ),
        (
            "/ui/client/client.js",
            "text/javascript; charset=utf-8",
            "class Client",
        ),
    ] {
        let answer = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        assert_eq!(answer.headers()["content-type"], content_type, "{path}");
        assert_eq!(
            answer.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
        assert!(answer.text().await.unwrap().contains(needle), "{path}");
    }
    // Every module the client's index imports is served.
    let index = http
        .get(format!("{base}/ui/client/index.js"))
        .send()
        .await
        .unwrap();
    for module in index.text().await.unwrap().split("from \"./").skip(1) {
        let name = module.split('"').next().unwrap();
        let answer = http
            .get(format!("{base}/ui/client/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{name}");
    }
    let missing = http
        .get(format!("{base}/ui/client/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The API itself still wants the token.
    let api = http
        .get(format!("{base}/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    server.kill_and_wait();
}

#[test]
fn a_user_runs_code_answers_input_sees_a_plot_and_cancels_in_chromium() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/install-test-deps installs Debian's chromium"
    );
    let harness = repo_dir("tests/browser");
    npm_ci(&harness);
    let python = common::rich_python();
    let (mut server, base) =
        spawn_server(&["--min-idle", "1", "--python", python.to_str().unwrap()]);
    let profile = tempfile::tempdir().unwrap();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("playground.png");
    let _ = std::fs::remove_file(&screenshot);
    let (status, stdout, stderr) = run(
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "playground.test.mjs"])
            .current_dir(&harness)
            .env("PYREPL3_URL", &base)
            .env("PYREPL3_TOKEN", ALICE)
            .env("PYREPL3_SCREENSHOT", &screenshot)
            .env("PYREPL3_BROWSER_PROFILE", profile.path()),
        BROWSER_DEADLINE,
    );
    server.kill_and_wait();
    assert!(
        status.success(),
        "the browser test failed:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("ℹ pass 8"), "{stdout}");
    assert!(stdout.contains("ℹ fail 0"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!("screenshot of the playground: {}", screenshot.display());
}
