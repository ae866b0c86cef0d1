//! WSGI entrypoints (PEP 3333) served through the runtime's adapter (`runtimes/python-3.12/
//! wsgi.py`): the environ of a request, bodies both ways, a response written through write() and
//! an iterable whose close() is called, a broken app's clear error, and a Django project's own
//! `wsgi.py`.

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
