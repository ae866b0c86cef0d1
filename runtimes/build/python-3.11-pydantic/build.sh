#!/bin/bash
# Build a static CPython 3.11.2 (wasm32-wasi, WASI preview1 command) with pydantic-core compiled
# in as builtin module pydantic_core._pydantic_core, and the standard library (+ pydantic) as a
# ZIP in a trailing custom section "aleph-wasm.stdlib". One output file, bit-for-bit reproducible.
# Sources only from registries (Debian bookworm, PyPI, crates.io).
# Usage: [WORK=dir] build.sh [all|fetch|rust|zlib|bzip2|sqlite|libc|cpython|stdlib|pack|check]
#   all = fetch..pack (as root: it apt-installs pinned packages); check = wasmtime-py smoke test.
set -euo pipefail
umask 022
HERE=$(cd "$(dirname "$0")" && pwd)
W=${WORK:-/tmp/python-3.11-pydantic}; mkdir -p "$W"; W=$(cd "$W" && pwd)
SRC=$W/src; DL=$W/dl; B=$W/build; OUT=$W/out; LOG=$W/logs
PYVER=3.11.2; PYDANTIC=2.14.4; PCORE=2.50.5
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}; export CARGO_HOME
# fixed environment: no pyenv shims, fixed locale/timezone/hash seed, fixed dates
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$CARGO_HOME/bin
export LC_ALL=C TZ=UTC PYTHONHASHSEED=0 SOURCE_DATE_EPOCH=1675814400   # 2023-02-08, CPython 3.11.2 release
HOSTPY=/usr/bin/python3.11     # Debian's 3.11.2: build python for CPython, compileall, zip writer
SECTION=aleph-wasm.stdlib
mkdir -p $SRC/deb $DL $B $OUT $LOG
STAGE=${1:-all}
step(){ echo "== $(date -u +%T) $*"; }
run(){ [ "$STAGE" = all ] || [ "$STAGE" = "$1" ]; }
T0=$(date +%s)

# --- 0. toolchain + sources ------------------------------------------------
if run fetch; then
  step fetch
  if [ ! -f /etc/apt/sources.list.d/pyd-src.sources ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > /etc/apt/sources.list.d/pyd-src.sources
  fi
  apt-get update -qq
  L16=1:16.0.6-15~deb12u1; P311=3.11.2-6+deb12u6
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-16=$L16 lld-16=$L16 llvm-16=$L16 \
    libclang-rt-16-dev-wasm32=$L16 wasi-libc=0.0~git20220510.9886d3d-2 python3.11=$P311 \
    libpython3.11-stdlib=$P311 python3.11-venv=$P311 zlib1g=1:1.2.13.dfsg-1 tcl8.6=8.6.13+dfsg-2 tcl dpkg-dev >/dev/null
  rustc -V | grep -q '^rustc 1\.95\.0 ' || { echo "need rustc 1.95.0, have: $(rustc -V)"; exit 1; }
  rustup target add wasm32-wasip1 >/dev/null
  # apt-get source verifies each file against the signed .dsc; the sha256s are pinned again below
  (cd $SRC/deb && apt-get source -qq --download-only python3.11=3.11.2-6+deb12u8 sqlite3=3.40.1-2+deb12u2 \
     zlib=1:1.2.13.dfsg-1 bzip2=1.0.8-5 wasi-libc=0.0~git20220510.9886d3d-2)
  (cd $SRC/deb && sha256sum -c --quiet) <<SUM
2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849  python3.11_3.11.2.orig.tar.gz
aaa776260ab4dc976db34aa7891819484c8676b5b2783123ebc6301e2ca5d655  sqlite3_3.40.1.orig.tar.xz
71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1  zlib_1.2.13.dfsg.orig.tar.bz2
ab5a03176ee106d3f0fa90e381da478ddae405918153cca248e682cd0c4a2269  bzip2_1.0.8.orig.tar.gz
8f9b802736a856942839d32966937c389f46e9f156415a549a6675b7535e5f74  wasi-libc_0.0~git20220510.9886d3d.orig.tar.xz
SUM
  [ -x $W/venv/bin/python ] || $HOSTPY -m venv $W/venv
  (cd $DL && $W/venv/bin/pip download -q --no-deps --require-hashes -r /dev/stdin) <<REQ
pydantic==$PYDANTIC --hash=sha256:653a2ad9f6d8858529c77c72717d0ea991d6c6837fe683246b2f4b2bbfc3fadc
annotated-types==0.8.0 --hash=sha256:f072f4d804ea359e4eaf198b1af7a8b0943881a87f31bb764f8bf219bb9419e0
typing-extensions==4.16.0 --hash=sha256:481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8
typing-inspection==0.4.5 --hash=sha256:bc210535442b39e1bf2805e0c7a17dfd6a4ace760c84c7f7d16245d23a6b1c39
REQ
  # the sdist is fetched as a file (pip download would build maturin to read its metadata)
  [ -f $DL/pydantic_core-$PCORE.tar.gz ] || $HOSTPY - $DL pydantic-core $PCORE <<'PY'
import json, sys, urllib.request
dl, name, ver = sys.argv[1:4]
fn = f"{name.replace('-', '_')}-{ver}.tar.gz"   # PEP 691 JSON simple index
req = urllib.request.Request(f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
u = next(f for f in json.load(urllib.request.urlopen(req))["files"] if f["filename"] == fn)
urllib.request.urlretrieve(u["url"], f"{dl}/{fn}")
PY
  echo "1e740886083ff95530d694e6a3f09ed914bcf92a496d16acd307c6c3484fc36d  $DL/pydantic_core-$PCORE.tar.gz" | sha256sum -c --quiet
fi

MAP="-ffile-prefix-map=$W=/build"
WCC="clang-16 --target=wasm32-wasi --sysroot=/usr"
WAR=llvm-ar-16     # deterministic archives by default

# --- 1. pydantic-core staticlib (crates from crates.io, checked by Cargo.lock) ----
if run rust; then
  step pydantic-core
  rm -rf $SRC/pydantic_core-$PCORE; tar xzf $DL/pydantic_core-$PCORE.tar.gz -C $SRC
  (cd $SRC/pydantic_core-$PCORE && env PYO3_CROSS_PYTHON_VERSION=3.11 PYO3_BUILD_EXTENSION_MODULE=1 \
     RUSTFLAGS="--remap-path-prefix=$CARGO_HOME=/cargo --remap-path-prefix=$W=/build" \
     CARGO_TARGET_DIR=$B/cargo-target cargo rustc --release --locked --lib --target wasm32-wasip1 \
     --crate-type staticlib -j2) > $LOG/cargo.log 2>&1
  cp $B/cargo-target/wasm32-wasip1/release/lib_pydantic_core.a $B/
fi

# --- 2. zlib, bzip2 (compiled by hand for wasi) --------------------------------
if run zlib; then
  step zlib
  rm -rf $B/zlib; mkdir -p $B/zlib; tar xjf $SRC/deb/zlib_1.2.13.dfsg.orig.tar.bz2 -C $B/zlib --strip-components=1
  (cd $B/zlib && for f in adler32 crc32 deflate infback inffast inflate inftrees trees zutil compress uncompr gzclose gzlib gzread gzwrite; do
     $WCC -O2 $MAP -DHAVE_UNISTD_H -include unistd.h -c $f.c -o $f.o; done && $WAR rcs libz.a *.o) > $LOG/zlib.log 2>&1
fi
if run bzip2; then
  step bzip2
  rm -rf $B/bzip2; mkdir -p $B/bzip2; tar xzf $SRC/deb/bzip2_1.0.8.orig.tar.gz -C $B/bzip2 --strip-components=1
  (cd $B/bzip2 && for f in blocksort huffman crctable randtable compress decompress bzlib; do
     $WCC -O2 $MAP -D_FILE_OFFSET_BITS=64 -c $f.c -o $f.o; done && $WAR rcs libbz2.a *.o) > $LOG/bzip2.log 2>&1
fi

# --- 3. sqlite (amalgamation generated natively with tclsh, compiled for wasi) ---
if run sqlite; then
  step sqlite
  rm -rf $B/sqlite; mkdir -p $B/sqlite/gen; tar xJf $SRC/deb/sqlite3_3.40.1.orig.tar.xz -C $B/sqlite --strip-components=1
  (cd $B/sqlite/gen && ../configure -q >/dev/null && make -s sqlite3.c sqlite3.h) > $LOG/sqlite.log 2>&1
  cp $HERE/wasi_sqlite_shim.h $B/sqlite/
  (cd $B/sqlite && $WCC -O2 $MAP -D_WASI_EMULATED_MMAN -D_WASI_EMULATED_GETPID -D_WASI_EMULATED_SIGNAL \
     -DSQLITE_THREADSAFE=0 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_WAL \
     -DSQLITE_MAX_MMAP_SIZE=0 -DSQLITE_ENABLE_MATH_FUNCTIONS -include wasi_sqlite_shim.h -DSQLITE_TEMP_STORE=3 \
     -c gen/sqlite3.c -o sqlite3.o && $WAR rcs libsqlite3.a sqlite3.o && cp gen/sqlite3.h .) >> $LOG/sqlite.log 2>&1
fi

# --- 3b. wasi-libc's path functions, as later wasi-libc has them ---------------------------
# This wasi-libc (2022) fails a path under no preopen (stat("/var") beside a preopen /var/lib/x)
# with ENOTCAPABLE, which Python raises as PermissionError: pathlib's exists() then raises,
# and SQLite (which lstat()s each parent of a database path) cannot open any file database.
# Later wasi-libc fails them with ENOENT, as python-3.12's does. Its posix.c (the functions
# that resolve an absolute path against the preopens) is rebuilt with ENOENT there and linked
# ahead of libc.a, so its definitions are the ones the interpreter uses.
if run libc; then
  step wasi-libc-posix
  rm -rf $B/wasi-libc; mkdir -p $B/wasi-libc
  tar xJf $SRC/deb/wasi-libc_0.0~git20220510.9886d3d.orig.tar.xz -C $B/wasi-libc --strip-components=1 \
    --wildcards '*/libc-bottom-half/sources/posix.c'
  $HOSTPY - $B/wasi-libc/libc-bottom-half/sources/posix.c <<'PY'
import re, sys
p = sys.argv[1]; s = open(p).read()
# "no preopen holds this path" (24 places); the 2 other ENOTCAPABLEs (unlink's) are the host's
s, n = re.subn(r"(if \([\w |=-]*dirfd == -1\) \{\n\s*errno = )ENOTCAPABLE;", r"\1ENOENT;", s)
s, m = re.subn(r"(// We couldn't find a preopen for it; indicate that we lack capabilities.\n\s*errno = )ENOTCAPABLE;", r"\1ENOENT;", s)
assert (n, m, s.count("ENOTCAPABLE")) == (22, 2, 2), (n, m, s.count("ENOTCAPABLE"))
open(p, "w").write(s)
PY
  $WCC -O2 $MAP -c $B/wasi-libc/libc-bottom-half/sources/posix.c -o $B/wasi_posix.o > $LOG/wasi-libc.log 2>&1
fi

# --- 4. CPython 3.11.2 for wasm32-wasi with _pydantic_core in the inittab -------
if run cpython; then
  step cpython-configure
  rm -rf $B/cpython; mkdir -p $B/cpython; tar xzf $SRC/deb/python3.11_3.11.2.orig.tar.gz -C $B/cpython --strip-components=1
  cd $B/cpython
  # register the Rust module as builtin "pydantic_core._pydantic_core"
  sed -i 's|^/\* -- ADDMODULE MARKER 1 -- \*/|extern PyObject* PyInit__pydantic_core(void);\n&|; s|^    /\* Sentinel \*/|    {"pydantic_core._pydantic_core", PyInit__pydantic_core},\n&|' Modules/config.c.in
  # no build date in sys.version: the release date of 3.11.2
  sed -i 's|^#define DATE __DATE__|#define DATE "Feb  8 2023"|; s|^#define TIME __TIME__|#define TIME "00:00:00"|' Modules/getbuildinfo.c
  grep -q '"Feb  8 2023"' Modules/getbuildinfo.c
  # 3.11's BuiltinImporter refuses submodules (path is not None); let it find dotted builtins as 3.12+ does
  $HOSTPY - <<'PY'
p = "Lib/importlib/_bootstrap.py"; s = open(p).read()
old = "    def find_spec(cls, fullname, path=None, target=None):\n        if path is not None:\n            return None\n        if _imp.is_builtin(fullname):"
assert old in s
open(p, "w").write(s.replace(old, "    def find_spec(cls, fullname, path=None, target=None):\n        if _imp.is_builtin(fullname):"))
PY
  # 8 MiB C stack (default for WASI in 3.11 is 512 KiB), bigger initial memory to fit it
  sed -i 's/-z stack-size=524288/-z stack-size=8388608/; s/--initial-memory=10485760/--initial-memory=20971520/' configure
  mkdir -p builddir/wasi && cd builddir/wasi
  env CONFIG_SITE=../../Tools/wasm/config.site-wasm32-wasi CC="$WCC" CPP="clang-cpp-16 --target=wasm32-wasi --sysroot=/usr" \
    AR=$WAR RANLIB=llvm-ranlib-16 PKG_CONFIG=/bin/false \
    CFLAGS="-O2 $MAP -Wno-error=int-conversion -Wno-error=incompatible-function-pointer-types" \
    ZLIB_CFLAGS=-I$B/zlib ZLIB_LIBS="-L$B/zlib -lz" BZIP2_CFLAGS=-I$B/bzip2 BZIP2_LIBS="-L$B/bzip2 -lbz2" \
    LIBSQLITE3_CFLAGS=-I$B/sqlite LIBSQLITE3_LIBS="-L$B/sqlite -lsqlite3" \
    ../../configure -C --host=wasm32-unknown-wasi --build=$(../../config.guess) \
      --with-build-python=$HOSTPY --disable-ipv6 --disable-test-modules > $LOG/cpython-configure.log 2>&1
  for m in _bz2 zlib _sqlite3; do grep -q "for stdlib extension module $m... yes" $LOG/cpython-configure.log || { echo "configure: $m not enabled"; exit 1; }; done
  step cpython-make
  make -j2 all BASEMODLIBS="$B/lib_pydantic_core.a $B/wasi_posix.o" > $LOG/cpython-make.log 2>&1
  # drop DWARF, keep the "name" section (function names for backtraces)
  llvm-objcopy-16 --strip-debug python.wasm $B/python-stripped.wasm
  cd $W
fi

# --- 5. stdlib + pure-Python packages into a staging dir, .pyc beside the .py ----
if run stdlib; then
  step stdlib
  S=$B/stdlib; rm -rf $S; mkdir -p $S
  (cd $B/cpython/Lib && tar cf - --exclude=test --exclude=tests --exclude=idle_test --exclude=idlelib --exclude=tkinter \
     --exclude=turtledemo --exclude=turtle.py --exclude=ensurepip --exclude=__pycache__ --exclude=site-packages .) | tar xf - -C $S
  # _sysconfigdata records the configure/build paths: write them as /build, then lay the dict out
  # again as sysconfig does (pprint wraps lines by length, so a longer $W moved the wraps)
  for f in $B/cpython/builddir/wasi/build/lib.wasi-wasm32-3.11/_sysconfigdata_*.py; do
    $HOSTPY - "$f" "$W" > $S/$(basename $f) <<'PY'
import pprint, sys
path, work = sys.argv[1:3]
scope = {}
exec(open(path).read(), scope)
fix = lambda v: v.replace(work, "/build") if isinstance(v, str) else v
print("# system configuration generated and used by the sysconfig module")
print("build_time_vars = ", end="")
pprint.pprint({k: fix(v) for k, v in scope["build_time_vars"].items()})
PY
  done
  for w in pydantic-$PYDANTIC annotated_types-0.8.0 typing_extensions-4.16.0 typing_inspection-0.4.5; do
    $HOSTPY -m zipfile -e $DL/$w-py3-none-any.whl $S; done
  rm -rf $B/pcore-py; mkdir -p $B/pcore-py; tar xzf $DL/pydantic_core-$PCORE.tar.gz -C $B/pcore-py --strip-components=1
  cp -r $B/pcore-py/python/pydantic_core $S/
  rm -rf $S/pydantic_core/_pydantic_core   # .pyi stubs only; the module is builtin
  mkdir -p $S/pydantic_core-$PCORE.dist-info; cp $B/pcore-py/PKG-INFO $S/pydantic_core-$PCORE.dist-info/METADATA
  if grep -rlI -F "$W" $S; then echo "build path leaked into the stdlib"; exit 1; fi
  # unchecked-hash pycs beside the .py (-b: zipimport ignores __pycache__), no mtimes; filenames in code objects relative to the default zip path
  # (one process: pyc bytes depend on refcounts, PYTHONHASHSEED=0 fixes frozenset order)
  $HOSTPY -m compileall -q -f -b --invalidation-mode unchecked-hash -s $S -p /usr/local/lib/python311.zip $S \
     > $LOG/compileall.log 2>&1 || { echo "compileall errors:"; head -20 $LOG/compileall.log; }
fi

# --- 6. one file: python.wasm + custom section "aleph-wasm.stdlib" = the zip ------
if run pack; then
  step pack
  $HOSTPY - $B/stdlib $B/python-stripped.wasm $OUT/python.wasm $SECTION <<'PY'
import io, os, sys, zipfile
root, wasm_in, out, name = sys.argv[1:5]
files = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
               for d, _, fs in os.walk(root) for f in fs)
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    for rel in files:
        zi = zipfile.ZipInfo(rel, (1980, 1, 1, 0, 0, 0))
        zi.create_system = 3; zi.external_attr = 0o100644 << 16
        with open(os.path.join(root, rel), "rb") as fh:
            z.writestr(zi, fh.read(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
zb = buf.getvalue()
def leb(n):
    b = bytearray()
    while True:
        x = n & 0x7f; n >>= 7
        b.append(x | (0x80 if n else 0))
        if not n: return bytes(b)
wasm = open(wasm_in, "rb").read()
assert wasm[:8] == b"\0asm\1\0\0\0" and name.encode() not in wasm
nm = name.encode(); payload = leb(len(nm)) + nm + zb
open(out, "wb").write(wasm + b"\0" + leb(len(payload)) + payload)
print(f"{len(files)} files, zip {len(zb)} bytes, module {len(wasm)} bytes")
PY
  echo "build time: $(( $(date +%s) - T0 )) s"
  ls -l $OUT/python.wasm | awk '{print "size:", $5}'; sha256sum $OUT/python.wasm
fi

# --- check: run it under wasmtime-py with the stdlib read from the file itself ----
if [ "$STAGE" = check ]; then
  [ -x $W/venv/bin/python ] || $HOSTPY -m venv $W/venv
  $W/venv/bin/python -c 'import wasmtime' 2>/dev/null || $W/venv/bin/pip -q install wasmtime==51.0.0
  C=$W/check; rm -rf $C; mkdir -p $C/usr/local/lib $C/tmp
  mkdir -p $C/x; cp $OUT/python.wasm $C/usr/local/lib/python311.zip; cp $OUT/python.wasm $C/x/python.wasm
  $HOSTPY -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); print('zip entries:', len(z.namelist()))" $OUT/python.wasm
  cat > $C/tmp/smoke.py <<'PY'
import sys, json, sqlite3, zlib, bz2, decimal, asyncio, pydantic, pydantic_core
print(sys.version); print(pydantic.BaseModel, pydantic.VERSION, pydantic_core.__version__)
print("path:", sys.path, "json from:", json.__file__)
class M(pydantic.BaseModel):
    x: int
print("validated:", repr(M.model_validate({"x": "1"})))
try:
    M.model_validate({"x": "a"}); print("NO ERROR?!"); sys.exit(1)
except pydantic.ValidationError as e:
    print("ValidationError:", e.errors()[0]["type"])
assert bz2.decompress(bz2.compress(b"ab" * 5000)) == b"ab" * 5000
assert zlib.decompress(zlib.compress(b"ab" * 5000)) == b"ab" * 5000
db = sqlite3.connect(":memory:"); print("sqlite", sqlite3.sqlite_version, db.execute("select 1+1").fetchone())
print("decimal", decimal.Decimal("1.1") + decimal.Decimal("2.2"), "json", json.dumps({"a": [1]}))
print("SMOKE OK")
PY
  cat > $C/run.py <<'PY'
import sys, wasmtime
mod, root, env = sys.argv[1], sys.argv[2], [tuple(a.split("=", 1)) for a in sys.argv[3:] if "=" in a]
args = [a for a in sys.argv[3:] if "=" not in a]
engine = wasmtime.Engine(); module = wasmtime.Module.from_file(engine, mod)
wasi = wasmtime.WasiConfig(); wasi.argv = ["python"] + args; wasi.env = env
wasi.preopen_dir(root + "/usr/local", "/usr/local"); wasi.preopen_dir(root + "/tmp", "/tmp")
wasi.preopen_dir(root + "/x", "/x")
wasi.inherit_stdout(); wasi.inherit_stderr()
store = wasmtime.Store(engine); store.set_wasi(wasi)
linker = wasmtime.Linker(engine); linker.define_wasi()
try:
    linker.instantiate(store, module).exports(store)["_start"](store); code = 0
except wasmtime.ExitTrap as e:
    code = e.code
sys.exit(code)
PY
  step "check: PYTHONHOME=/usr/local, file mounted as /usr/local/lib/python311.zip"
  $W/venv/bin/python $C/run.py $OUT/python.wasm $C PYTHONHOME=/usr/local /tmp/smoke.py 2> $C/stderr.txt | tee $C/stdout.txt
  grep -q 'SMOKE OK' $C/stdout.txt
  if [ -s $C/stderr.txt ]; then echo "stderr not empty:"; cat $C/stderr.txt; exit 1; fi
  echo "stderr: (empty)"
  step "check: PYTHONHOME=/x PYTHONPATH=/x/python.wasm, file mounted as /x/python.wasm"
  $W/venv/bin/python $C/run.py $OUT/python.wasm $C PYTHONHOME=/x PYTHONPATH=/x/python.wasm /tmp/smoke.py 2> $C/stderr.txt > $C/stdout.txt
  grep 'path:' $C/stdout.txt; grep -q 'SMOKE OK' $C/stdout.txt
  if [ -s $C/stderr.txt ]; then echo "stderr not empty:"; cat $C/stderr.txt; exit 1; fi
  echo "stderr: (empty)"; echo "CHECK OK"
fi
