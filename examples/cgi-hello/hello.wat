;; A CGI program for the `binary` interface, written in WebAssembly text.
;; It answers every request with a greeting followed by its CGI environment
;; (REQUEST_METHOD, PATH_INFO, QUERY_STRING, HTTP_* …), one variable a line.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "Content-Type: text/plain\0d\0a\0d\0aHello from aleph-wasm!\0a\0a")
  ;; write(ptr, len) to stdout through an iovec at 0
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $count i32) (local $size i32) (local $i i32) (local $buf i32)
    (call $write (i32.const 16) (i32.const 52))
    ;; counts at 100/104, pointers at 1024, strings at 8192
    (drop (call $environ_sizes_get (i32.const 100) (i32.const 104)))
    (local.set $count (i32.load (i32.const 100)))
    (local.set $size (i32.load (i32.const 104)))
    (local.set $buf (i32.const 8192))
    (if (i32.gt_u (local.get $size) (i32.const 57344)) (then (return)))
    (drop (call $environ_get (i32.const 1024) (local.get $buf)))
    ;; turn the NUL separators into newlines, then write the block
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $size)))
        (if (i32.eqz (i32.load8_u (i32.add (local.get $buf) (local.get $i))))
          (then (i32.store8 (i32.add (local.get $buf) (local.get $i)) (i32.const 10))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $write (local.get $buf) (local.get $size))))
