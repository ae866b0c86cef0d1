;; A batch job for the `binary` interface, written in WebAssembly text.
;; It reads /data/in.txt (the program's data archive, mounted read-only), counts its
;; bytes and lines, and writes the counts to /out/report.txt (the export mount), which the
;; engine packs into a byte-reproducible archive after the run.
;; Preopens: fd 3 is /data, fd 4 is /out (data first, then export).
;; Rights: 2 is fd_read, 64 is fd_write.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "in.txt")
  (data (i32.const 80) "report.txt")
  (data (i32.const 96) "bytes: ")
  (data (i32.const 112) "lines: ")
  ;; Appends the decimal form of $n at $at; returns the new end.
  (func $itoa (param $n i32) (param $at i32) (result i32)
    (local $len i32) (local $i i32) (local $tmp i32)
    (if (i32.eqz (local.get $n))
      (then (i32.store8 (local.get $at) (i32.const 48))
            (return (i32.add (local.get $at) (i32.const 1)))))
    (local.set $tmp (local.get $n))
    (block $d (loop $l
      (br_if $d (i32.eqz (local.get $tmp)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br $l)))
    (local.set $i (local.get $len))
    (block $d (loop $l
      (br_if $d (i32.eqz (local.get $n)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $at) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br $l)))
    (i32.add (local.get $at) (local.get $len)))
  (func $copy (param $src i32) (param $len i32) (param $at i32) (result i32)
    (memory.copy (local.get $at) (local.get $src) (local.get $len))
    (i32.add (local.get $at) (local.get $len)))
  (func (export "_start")
    (local $fd i32) (local $n i32) (local $bytes i32) (local $lines i32) (local $i i32) (local $end i32)
    ;; open /data/in.txt for reading
    (if (call $path_open (i32.const 3) (i32.const 1) (i32.const 64) (i32.const 6)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))
      (then (call $proc_exit (i32.const 2))))
    (local.set $fd (i32.load (i32.const 8)))
    ;; read in 4 KiB chunks into 4096.. through the iovec at 16
    (block $eof (loop $more
      (i32.store (i32.const 16) (i32.const 4096))
      (i32.store (i32.const 20) (i32.const 4096))
      (if (call $fd_read (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24))
        (then (call $proc_exit (i32.const 3))))
      (local.set $n (i32.load (i32.const 24)))
      (br_if $eof (i32.eqz (local.get $n)))
      (local.set $bytes (i32.add (local.get $bytes) (local.get $n)))
      (local.set $i (i32.const 0))
      (block $d (loop $l
        (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (i32.const 4096) (local.get $i))) (i32.const 10))
          (then (local.set $lines (i32.add (local.get $lines) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
      (br $more)))
    ;; build "bytes: N\nlines: M\n" at 32768
    (local.set $end (call $copy (i32.const 96) (i32.const 7) (i32.const 32768)))
    (local.set $end (call $itoa (local.get $bytes) (local.get $end)))
    (i32.store8 (local.get $end) (i32.const 10))
    (local.set $end (call $copy (i32.const 112) (i32.const 7) (i32.add (local.get $end) (i32.const 1))))
    (local.set $end (call $itoa (local.get $lines) (local.get $end)))
    (i32.store8 (local.get $end) (i32.const 10))
    (local.set $end (i32.add (local.get $end) (i32.const 1)))
    ;; create /out/report.txt and write the report
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 80) (i32.const 10)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 8))
      (then (call $proc_exit (i32.const 4))))
    (local.set $fd (i32.load (i32.const 8)))
    (i32.store (i32.const 16) (i32.const 32768))
    (i32.store (i32.const 20) (i32.sub (local.get $end) (i32.const 32768)))
    (if (call $fd_write (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24))
      (then (call $proc_exit (i32.const 5))))
    ;; and the same report on stdout
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
