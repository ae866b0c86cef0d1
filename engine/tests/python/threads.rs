//! The Python runtime's thread model (docs/python-runtime.md) and its stand-in modules, checked
//! by an app that exercises them from inside the interpreter (`tests/python/threads/main.py`):
//! work handed to a thread is deferred until something waits for it or the loop turns, runs as
//! its thread with no event loop running, and a wait that can never end raises instead of
//! spinning until the fuel runs out.

use super::*;

/// The thread-model app.
const THREADS_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/threads");

fn threads_program(py: &Py) -> Message {
    let code = py.code(Path::new(THREADS_APP));
    py.program(&code, "main:app", json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_are_deferred_work_and_impossible_waits_raise() {
    let py = Py::new();
    let msg = threads_program(&py);
    let ex = py.executor(config(true));
    let v = ok_json(&run(&ex, &msg, http("GET /sync")).await);

    // start() hands the target over; join() runs it, as its thread.
    assert_eq!(
        v["deferred"],
        json!([
            ["after start", true],
            ["thread", "worker-1"],
            ["after join", false, "MainThread"]
        ])
    );
    // A consumer started before anything was produced gets everything, then the sentinel.
    assert_eq!(v["producer_consumer"], json!([55]));
    assert_eq!(v["event_set_by_thread"], json!(true));
    // Nothing can ever set this event: a clear error, not a spin until the fuel runs out.
    let deadlock = &v["deadlock"];
    assert_eq!(deadlock["raised"], "DeadlockError", "{v:#}");
    assert_eq!(deadlock["runtime_error"], true, "{v:#}");
    let message = deadlock["message"].as_str().unwrap();
    assert!(message.starts_with("deadlock: "), "{message}");
    assert!(message.contains("docs/python-runtime.md"), "{message}");
    // With a timeout the wait fails after it, as with threads.
    assert_eq!(v["wait_timeout"], json!([false, true]));
    assert_eq!(v["lock"][0], json!(false));
    assert_eq!(v["lock"][1], json!(false));
    assert_eq!(v["lock"][2]["raised"], "DeadlockError", "{v:#}");
    assert_eq!(v["executor"], json!([1, 2, 4, 8, 16, 1, 2]));
    assert_eq!(v["excepthook"], json!([["ZeroDivisionError", "failing"]]));
    assert_eq!(v["timer"], json!(["timer"]));
    assert_eq!(v["simple_queue"]["raised"], "Empty", "{v:#}");
    assert_eq!(v["local_shared"], json!(["main"]));

    // Stand-ins: they import; what needs a process or a user database fails clearly.
    let mp = &v["multiprocessing"];
    assert_eq!(mp[0], json!(true));
    assert_eq!(mp[1], json!("MainProcess"));
    for refused in [&mp[2], &mp[3]] {
        assert_eq!(refused["raised"], "NotImplementedError", "{v:#}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("has no processes"),
            "{v:#}"
        );
    }
    assert!(
        mp[2]["message"]
            .as_str()
            .unwrap()
            .starts_with("multiprocessing.Pool: "),
        "{v:#}"
    );
    assert_eq!(v["pwd"]["raised"], "KeyError", "{v:#}");
    assert_eq!(v["fcntl"][0], json!(true), "{v:#}");
    assert!(
        v["fcntl"][1].as_str().unwrap().contains("fcntl.flock"),
        "{v:#}"
    );
    // The time zone database ships with the runtime.
    assert_eq!(v["zoneinfo"], "2:00:00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_work_runs_off_the_loop_and_unjoined_threads_run_at_the_next_turn() {
    let py = Py::new();
    let msg = threads_program(&py);
    let ex = py.executor(config(true));
    let v = ok_json(&run(&ex, &msg, http("GET /async")).await);
    // Like a worker thread: no running loop, the context copied by to_thread().
    assert_eq!(
        v["to_thread"],
        json!({"loop_running": false, "thread": "MainThread", "var": "request"})
    );
    assert_eq!(v["run_in_executor"], json!(6));
    assert_eq!(v["executor_sees_no_loop"]["loop_running"], json!(false));
    assert_eq!(v["loop_after"], json!(true));

    // A thread nobody joins runs at the loop's next turn, after its request was answered.
    let v = ok_json(&run(&ex, &msg, http("GET /fire")).await);
    assert_eq!(v["ran_before_answer"], json!([]));
    let v = ok_json(&run(&ex, &msg, http("GET /fired")).await);
    assert_eq!(v["fired"], json!(["ran"]));
}
