//! The review page in a real browser: headless Chromium (Debian's `chromium` package) driven
//! over the DevTools protocol by a minimal client (one websocket, flat target sessions).
//!
//! Ignored by default because it needs Chromium; CI runs it with
//! `cargo test --release --test review_browser -- --ignored`. When Chromium is missing the test
//! FAILS with a message saying so (it never passes without a browser). `CLIPLABEL_CHROMIUM`
//! names the browser binary if it is not `chromium` on PATH. With `CLIPLABEL_UPDATE_SCREENSHOT=1`
//! the screenshot is also copied to `docs/review.png`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{stream::MaybeTlsStream, Message, WebSocket};

use cliplabel::review::{write_review, ReviewOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn find_chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CLIPLABEL_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no chromium found (install Debian's package: apt-get install -y chromium, or set CLIPLABEL_CHROMIUM); this test needs a real browser"
    );
}

struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch() -> Browser {
        let bin = find_chromium();
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1360,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("chromium exited before printing its DevTools address")
                .unwrap();
            if let Some(u) = line.strip_prefix("DevTools listening on ") {
                break u.trim().to_string();
            }
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (ws, _) = tungstenite::connect(url.as_str()).expect("connect to DevTools");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let targets = b.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["targetId"]
            .clone();
        let att = b.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        b.session = att["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Sends a command (to the page session once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools connection");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, expr: &str) {
        let start = Instant::now();
        while self.eval(expr) != json!(true) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {expr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn navigate(&mut self, url: &str) {
        // Mark the old document so that waiting cannot succeed on it (reloads).
        self.eval("window.__stale = true");
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            "!window.__stale && document.readyState === 'complete' && !!window.cliplabelReview \
             && Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete && i.naturalWidth > 0)",
        );
    }

    fn key(&mut self, key: &str) {
        let (code, vk, text) = match key {
            "Enter" => ("Enter".to_string(), 13, "\r".to_string()),
            k if k.len() == 1 && k.chars().all(|c| c.is_ascii_digit()) => {
                (format!("Digit{k}"), k.as_bytes()[0] as i64, k.to_string())
            }
            k if k.len() == 1 => (
                format!("Key{}", k.to_ascii_uppercase()),
                k.to_ascii_uppercase().as_bytes()[0] as i64,
                k.to_string(),
            ),
            k => panic!("unsupported key {k}"),
        };
        let slash = key == "/";
        let (code, vk) = if slash {
            ("Slash".to_string(), 191)
        } else {
            (code, vk)
        };
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk, "text": text}),
        );
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk}),
        );
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// 30 label rows over the repository's sample images: the truth from images/ground_truth.csv,
/// predictions made up deterministically (some wrong, some abstained, some with sets).
fn fixture_rows(dir: &Path) -> (PathBuf, Vec<(String, String, f32, bool)>) {
    let truth = std::fs::read_to_string(repo().join("images/ground_truth.csv")).unwrap();
    let classes: Vec<String> = std::fs::read_to_string(repo().join("images/classes.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut csv =
        String::from("path,label,score,label2,score2,label3,score3,predicted,cosine,set\n");
    let mut rows = Vec::new();
    for (i, line) in truth.lines().skip(1).take(30).enumerate() {
        let mut f = line.split(',');
        let (file, label) = (f.next().unwrap(), f.next().unwrap());
        let other = classes.iter().find(|c| *c != label).unwrap().clone();
        let third = classes.iter().rev().find(|c| *c != label).unwrap().clone();
        // Scores spread over (0.3, 0.99); every 7th row wrong; every 5th abstained.
        let score = 0.3 + 0.69 * (((i * 37) % 30) as f32 / 29.0);
        let (p1, p2) = if i % 7 == 3 {
            (other.clone(), label.to_string())
        } else {
            (label.to_string(), other.clone())
        };
        let abstained = i % 5 == 2;
        let s2 = (1.0 - score) * 0.4;
        let s3 = (1.0 - score) * 0.15;
        let set = if score < 0.6 {
            format!("{p1}|{p2}")
        } else {
            p1.clone()
        };
        csv.push_str(&format!(
            "../images/{file},{},{score:.6},{p2},{s2:.6},{third},{s3:.6},{p1},,{set}\n",
            if abstained { "unknown" } else { &p1 }
        ));
        rows.push((format!("../images/{file}"), p1, score, abstained));
    }
    let path = dir.join("labels.csv");
    std::fs::write(&path, csv).unwrap();
    (path, rows)
}

#[test]
#[ignore = "needs Debian's chromium; CI runs it with --ignored"]
fn review_page_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    // Rows name images as ../images/..., relative to a directory beside images/.
    let base = repo().join("tests");
    let (rows_path, rows) = fixture_rows(tmp.path());
    let out = tmp.path().join("review");
    let summary = write_review(
        &rows_path,
        &out,
        &ReviewOptions {
            base_dir: base.clone(),
            ..Default::default()
        },
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(summary.cards, 30);
    assert!(
        summary.thumb_failures.is_empty(),
        "{:?}",
        summary.thumb_failures
    );

    let mut b = Browser::launch();
    let url = format!("file://{}", out.join("index.html").display());
    b.navigate(&url);

    // Card count and order: abstained first, then least confident first (ties: input order).
    let n_cards = b.eval("document.querySelectorAll('.card').length");
    assert_eq!(n_cards, json!(30));
    let mut expected: Vec<usize> = (0..rows.len()).collect();
    expected.sort_by(|&a, &b| {
        rows[b]
            .3
            .cmp(&rows[a].3)
            .then(rows[a].2.total_cmp(&rows[b].2))
            .then(a.cmp(&b))
    });
    let dom: Vec<usize> = serde_json::from_value(
        b.eval("Array.from(document.querySelectorAll('.card')).map(c => +c.dataset.id)"),
    )
    .unwrap();
    assert_eq!(dom, expected, "cards in review order");
    assert_eq!(
        b.eval("document.querySelectorAll('.card.abstained').length"),
        json!(rows.iter().filter(|r| r.3).count())
    );

    // Correct two images with the keyboard: the first card gets its 2nd-ranked class (key 2),
    // the second a class typed into the type-ahead; accept the third; mark the fourth as not
    // any class and undo that.
    let classes: Vec<String> =
        serde_json::from_value(b.eval("window.CLIPLABEL_REVIEW.classes")).unwrap();
    let second_of_first: String = serde_json::from_value(b.eval(&format!(
        "window.CLIPLABEL_REVIEW.items[{}].top[1][0]",
        expected[0]
    )))
    .unwrap();
    b.key("2");
    b.key("/");
    b.wait_for("!document.getElementById('typeahead').hidden");
    let typed = classes
        .iter()
        .find(|c| **c != rows[expected[1]].1)
        .unwrap()
        .clone();
    b.call("Input.insertText", json!({"text": typed}));
    b.key("Enter");
    b.key("Enter");
    b.key("x");
    assert_eq!(
        b.eval("Object.keys(window.cliplabelReview.decisions()).length"),
        json!(4)
    );
    b.key("u");
    assert_eq!(
        b.eval("Object.keys(window.cliplabelReview.decisions()).length"),
        json!(3)
    );
    assert_eq!(
        b.eval("document.getElementById('progress-text').textContent"),
        json!("3 / 30 reviewed")
    );

    // A reload loses nothing.
    b.navigate(&url);
    assert_eq!(
        b.eval("Object.keys(window.cliplabelReview.decisions()).length"),
        json!(3)
    );

    // The export: decided rows in input order, absolute paths, labels as chosen.
    let csv: String = serde_json::from_value(b.eval("window.cliplabelReview.exportCsv()")).unwrap();
    let abs = |i: usize| {
        std::fs::canonicalize(base.join(&rows[i].0))
            .unwrap()
            .display()
            .to_string()
    };
    let mut want: Vec<(usize, String)> = vec![
        (expected[0], second_of_first),
        (expected[1], typed),
        (expected[2], rows[expected[2]].1.clone()),
    ];
    want.sort();
    let mut want_csv = String::from("path,label\n");
    for (i, label) in &want {
        want_csv.push_str(&format!("{},{label}\n", abs(*i)));
    }
    assert_eq!(csv, want_csv);
    // ... which `fit --train-csv` reads.
    let exported = tmp.path().join("reviewed.csv");
    std::fs::write(&exported, &csv).unwrap();
    let set = cliplabel::eval::dataset::LabelledSet::from_csv(&exported).unwrap();
    assert_eq!(set.paths.len(), 3);
    assert!(set.paths.iter().all(|p| p.is_file()));

    // Screenshot, for people: look at it.
    b.eval("window.scrollTo(0, 0)");
    let shot = tmp.path().join("review.png");
    b.screenshot(&shot);
    let img = image::open(&shot).unwrap();
    assert!(
        img.width() >= 1000,
        "screenshot {}x{}",
        img.width(),
        img.height()
    );
    let keep = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("review.png");
    std::fs::copy(&shot, &keep).unwrap();
    println!("screenshot: {}", keep.display());
    if std::env::var_os("CLIPLABEL_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        std::fs::copy(&shot, repo().join("docs/review.png")).unwrap();
    }
}
