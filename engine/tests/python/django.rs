//! A Django project unchanged (`examples/python-django`, Django vendored by pip at test time):
//! migrations at start-up, the ORM on sqlite in a persistent volume, templates, a form with
//! CSRF, sessions, static files, the admin's login page, sync and async views — all through
//! ASGI, on the runtime's thread model (docs/python-runtime.md).

use super::*;

/// The Django example, without its packages.
const DJANGO_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python-django");
/// Django and what it needs, pinned (the example's requirements.txt).
const DJANGO_WHEELS: [&str; 3] = ["Django==5.2.19", "asgiref==3.11.1", "sqlparse==0.5.4"];

/// Copies the tree `from` into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The example with its wheels unpacked into `packages/`, as a stored code archive.
fn django_code(py: &Py) -> String {
    let code = py.dir.path().join("django-code");
    copy_tree(Path::new(DJANGO_EXAMPLE), &code);
    let requirements = std::fs::read_to_string(code.join("requirements.txt")).unwrap();
    let pinned: Vec<&str> = requirements.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(pinned, DJANGO_WHEELS, "the example's requirements.txt");
    let packages = code.join("packages");
    for wheel in pure_wheels("django", &DJANGO_WHEELS) {
        let file = std::fs::File::open(&wheel).unwrap();
        zip::ZipArchive::new(file)
            .and_then(|mut z| z.extract(&packages))
            .unwrap_or_else(|e| panic!("{}: {e}", wheel.display()));
    }
    py.code(&code)
}

fn django_program(py: &Py, code: &str, entrypoint: &str) -> Message {
    py.program(
        code,
        entrypoint,
        json!({
            "resources": {"vcpus": 1, "memory": 256, "seconds": 30},
            "volumes": [{"name": "notes-db", "mount": "/var/lib/notes", "persistence": "host",
                         "size_mib": 16}],
        }),
    )
}

/// A browser's cookie jar, enough for Django's `csrftoken` and `sessionid`.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, o: &Outcome) {
        for (name, value) in &o.headers {
            if name.eq_ignore_ascii_case("set-cookie") {
                let pair = value.split(';').next().unwrap();
                let (k, v) = pair.split_once('=').unwrap();
                self.0.retain(|(old, _)| old != k);
                self.0.push((k.to_string(), v.to_string()));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The notes form posted with the jar's cookies, its CSRF `token` and `text` (form-encoded).
    fn note_form(&self, token: &str, text: &str) -> HttpRequest {
        let mut post = self.request("POST /");
        post.headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        post.body = format!("csrfmiddlewaretoken={token}&text={text}").into_bytes();
        post
    }

    fn request(&self, line: &str) -> HttpRequest {
        let mut req = request(line);
        let cookies: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !cookies.is_empty() {
            req.headers.push(("Cookie".into(), cookies.join("; ")));
        }
        req
    }
}

/// The value of the form's hidden `csrfmiddlewaretoken`.
fn form_token(page: &str) -> String {
    let at = page
        .find("name=\"csrfmiddlewaretoken\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF token in the form:\n{page}"));
    let rest = &page[at + "name=\"csrfmiddlewaretoken\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The example as a program on `py`'s runtime, a warm executor, and the notes page asked for
/// through it (the first request: migrations run at start-up), its cookies kept in the jar.
async fn open_notes(py: &Py) -> (String, Message, Executor, Jar, Outcome) {
    let code = django_code(py);
    let msg = django_program(py, &code, "site_config.asgi:application");
    let ex = py.executor(config(true));
    let mut jar = Jar::default();
    let o = run(&ex, &msg, Trigger::Http(jar.request("GET /"))).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    jar.take(&o);
    (code, msg, ex, jar, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_django_project_serves_its_pages_and_keeps_its_rows_across_instances() {
    let py = Py::new();
    // A sync view, a template, a form with its CSRF token; migrations ran at start-up.
    let (code, msg, ex, mut jar, o) = open_notes(&py).await;
    let page = body(&o);
    assert!(page.contains("<h1>Notes</h1>"), "{page}");
    assert!(page.contains("No notes yet."), "{page}");
    assert!(page.contains("href=\"/static/notes/style.css\""), "{page}");
    let token = form_token(&page);
    assert!(jar.get("csrftoken").is_some(), "no csrftoken cookie");

    // The form posted with its token: the row is written, the answer a redirect.
    let post = jar.note_form(&token, "written+in+wasm");
    let o = run(&ex, &msg, Trigger::Http(post.clone())).await;
    assert_eq!(o.status, Some(302), "{}", show(&o));
    assert_eq!(header(&o, "location"), Some("/"), "{}", show(&o));

    // Without the token: Django's CSRF protection refuses it.
    let mut forged = request("POST /");
    forged.headers = vec![(
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    )];
    forged.body = b"text=forged".to_vec();
    let o = run(&ex, &msg, Trigger::Http(forged)).await;
    assert_eq!(o.status, Some(403), "{}", show(&o));

    // An async view on the async ORM.
    let v = ok_json(&run(&ex, &msg, http("GET /api/notes")).await);
    assert_eq!(
        v,
        json!({"count": 1, "notes": [{"id": 1, "text": "written in wasm"}]})
    );

    // The detail page: a URL converter, a template filter with the time zone database.
    let o = run(&ex, &msg, http("GET /notes/1/")).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert!(
        body(&o).contains("<h1>written in wasm</h1>"),
        "{}",
        show(&o)
    );
    let o = run(&ex, &msg, http("GET /notes/99/")).await;
    assert_eq!(o.status, Some(404), "{}", show(&o));

    // Sessions: a counter in a session row, found again through the cookie.
    for expected in 1..=2 {
        let o = run(&ex, &msg, Trigger::Http(jar.request("GET /visits"))).await;
        jar.take(&o);
        assert_eq!(ok_json(&o), json!({"visits": expected}));
    }
    assert!(jar.get("sessionid").is_some(), "no sessionid cookie");

    // Static files and the admin: its login page, and the redirect to it.
    let o = run(&ex, &msg, http("GET /static/notes/style.css")).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert!(body(&o).contains("font-family"), "{}", show(&o));
    let o = run(&ex, &msg, http("GET /admin/login/")).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert!(
        body(&o).contains("<title>Log in | Django site admin</title>"),
        "{}",
        show(&o)
    );
    let o = run(&ex, &msg, http("GET /admin/")).await;
    assert_eq!(o.status, Some(302), "{}", show(&o));
    assert_eq!(
        header(&o, "location"),
        Some("/admin/login/?next=/admin/"),
        "{}",
        show(&o)
    );
    drop(ex);

    // A new instance (per-request isolation) of the same program finds the row.
    let fresh = py.executor(config(false));
    let v = ok_json(&run(&fresh, &msg, http("GET /api/notes")).await);
    assert_eq!(v["count"], json!(1), "{v}");

    // Django's WSGI entry as `startproject` writes it (its imports nest deeper than the
    // interpreter's C stack held as linked), through the runtime's WSGI adapter: the same
    // pages from the same rows.
    let wsgi = django_program(&py, &code, "site_config.wsgi:application");
    let o = run(&fresh, &wsgi, http("GET /notes/1/")).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert!(
        body(&o).contains("<h1>written in wasm</h1>"),
        "{}",
        show(&o)
    );
    let o = run(&fresh, &wsgi, http("GET /admin/")).await;
    assert_eq!(o.status, Some(302), "{}", show(&o));
}

/// The same project on python-3.11-pydantic (CPython 3.11.2, Debian 12's, with the wasi-libc
/// path functions that let SQLite open a file database in a volume): migrations at start-up,
/// a note posted through the form with its CSRF token, and the row read again by a new
/// instance through the async ORM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_django_project_keeps_its_rows_on_python_3_11_pydantic() {
    let py = Py::with_runtime(super::pydantic::pydantic_runtime);
    let (_code, msg, ex, jar, o) = open_notes(&py).await;
    let post = jar.note_form(&form_token(&body(&o)), "kept+on+3.11");
    let o = run(&ex, &msg, Trigger::Http(post)).await;
    assert_eq!(o.status, Some(302), "{}", show(&o));
    ex.shutdown().await;

    let fresh = py.executor(config(false));
    let v = ok_json(&run(&fresh, &msg, http("GET /api/notes")).await);
    assert_eq!(
        v,
        json!({"count": 1, "notes": [{"id": 1, "text": "kept on 3.11"}]})
    );
    fresh.shutdown().await;
}
