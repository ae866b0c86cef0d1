//! WSGI entrypoints (PEP 3333) served through the runtime's adapter (`runtimes/python-3.12/
//! wsgi.py`): the environ of a request, bodies both ways, a response written through write() and
//! an iterable whose close() is called, a broken app's clear error; and Flask, unchanged (Django's
//! own `wsgi.py` is in `django.rs`).

use super::*;

/// The plain WSGI app.
const WSGI_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/wsgi");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_wsgi_app_answers_through_the_adapter() {
    let py = Py::new();
    let code = py.code(Path::new(WSGI_APP));
    let msg = py.program(&code, "main:app", json!({}));
    let ex = py.executor(config(true));

    let mut req = request("POST /environ?a=1&b=%C3%A9");
    req.headers = vec![
        ("Content-Type".into(), "text/plain".into()),
        ("X-Twice".into(), "one".into()),
        ("X-Twice".into(), "two".into()),
    ];
    req.body = b"hello".to_vec();
    let v = ok_json(&run(&ex, &msg, Trigger::Http(req)).await);
    assert_eq!(
        v,
        json!({
            "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/environ",
            "QUERY_STRING": "a=1&b=%C3%A9", "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "5", "HTTP_X_TWICE": "one,two",
            "wsgi.url_scheme": "http", "wsgi.multithread": false,
            // The call runs as executor work: its own thread in the runtime's thread model.
            "thread": "MainThread",
        })
    );

    let mut echo = request("POST /echo");
    echo.body = (0..=255u8).cycle().take(300_000).collect();
    let o = run(&ex, &msg, Trigger::Http(echo.clone())).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert!(o.body == echo.body, "the echoed body differs");

    let o = run(&ex, &msg, http("GET /stream")).await;
    assert_eq!(o.status, Some(201), "{}", show(&o));
    assert_eq!(header(&o, "x-parts"), Some("3"));
    assert_eq!(body(&o), "one,two,three");
    let v = ok_json(&run(&ex, &msg, http("GET /closed")).await);
    assert_eq!(v, json!({"closed": 1}));

    let o = run(&ex, &msg, http("GET /broken")).await;
    assert_eq!(o.kind, OutcomeKind::Error, "{}", show(&o));
    assert!(
        o.error
            .as_deref()
            .unwrap_or_default()
            .contains("without calling start_response()"),
        "{}",
        show(&o)
    );
    ex.shutdown().await;
}

/// Flask and its dependencies; markupsafe publishes no pure-Python wheel, and its Linux wheel's
/// compiled module is skipped by the interpreter (markupsafe then uses its Python code).
const FLASK_WHEELS: [&str; 6] = [
    "flask==3.1.3",
    "werkzeug==3.1.9",
    "jinja2==3.1.6",
    "itsdangerous==2.2.0",
    "click==8.5.1",
    "blinker==1.9.0",
];
const MARKUPSAFE_WHEEL: [&str; 1] = ["markupsafe==3.0.4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flask_app_runs_unchanged() {
    let py = Py::new();
    let code = py.dir.path().join("flask-code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::copy(
        Path::new(WSGI_APP).with_file_name("flask").join("app.py"),
        code.join("app.py"),
    )
    .unwrap();
    let wheels = pure_wheels("flask", &FLASK_WHEELS)
        .into_iter()
        .chain(linux_wheels("markupsafe", &MARKUPSAFE_WHEEL));
    for wheel in wheels {
        let file = std::fs::File::open(&wheel).unwrap();
        zip::ZipArchive::new(file)
            .and_then(|mut z| z.extract(code.join("packages")))
            .unwrap_or_else(|e| panic!("{}: {e}", wheel.display()));
    }
    let msg = py.program(&py.code(&code), "app:app", json!({}));
    let ex = py.executor(config(true));

    // A template: autoescaped by markupsafe's Python code, a loop.
    let o = run(&ex, &msg, http("GET /?name=%3Cb%3Ewasm%3C/b%3E&count=3")).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert_eq!(
        body(&o),
        "<h1>Hello, &lt;b&gt;wasm&lt;/b&gt;!</h1><i>0</i><i>1</i><i>2</i>"
    );
    assert_eq!(header(&o, "content-type"), Some("text/html; charset=utf-8"));

    // JSON in and out.
    let mut post = request("POST /items");
    post.headers = vec![("Content-Type".into(), "application/json".into())];
    post.body = br#"{"items": [1, 2, 3]}"#.to_vec();
    let o = run(&ex, &msg, Trigger::Http(post)).await;
    assert_eq!(o.status, Some(201), "{}", show(&o));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.body).unwrap(),
        json!({"received": {"items": [1, 2, 3]}, "count": 3})
    );

    // The session: a cookie signed by itsdangerous, sent back.
    let o = run(&ex, &msg, http("GET /visits")).await;
    assert_eq!(ok_json(&o), json!({"visits": 1}));
    let cookie = header(&o, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let mut again = request("GET /visits");
    again.headers = vec![("Cookie".into(), cookie)];
    assert_eq!(
        ok_json(&run(&ex, &msg, Trigger::Http(again)).await),
        json!({"visits": 2})
    );

    // A redirect built by url_for, and the app's own 404 handler.
    let o = run(&ex, &msg, http("GET /old")).await;
    assert_eq!(o.status, Some(302), "{}", show(&o));
    assert_eq!(header(&o, "location"), Some("/?name=moved"));
    let o = run(&ex, &msg, http("GET /nowhere")).await;
    assert_eq!(o.status, Some(404), "{}", show(&o));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.body).unwrap(),
        json!({"error": "not here", "path": "/nowhere"})
    );
    ex.shutdown().await;
}
