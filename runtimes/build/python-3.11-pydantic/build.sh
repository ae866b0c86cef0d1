#!/bin/bash
# Build a static CPython 3.11 (wasm32-wasi, WASI preview1 command) with pydantic-core
# compiled in as builtin module pydantic_core._pydantic_core. Sources only from registries.
# Usage: [WORK=dir] build.sh [all|fetch|rust|zlib|sqlite|cpython|install]  (as root: it apt-installs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=${WORK:-/tmp/python-3.11-pydantic}; SRC=$W/src; DL=$W/dl; B=$W/build; OUT=$W/out; LOG=$W/logs
PYVER=3.11.2; PYDANTIC=2.14.4; PCORE=2.50.5
mkdir -p $SRC/deb $DL $B $OUT $LOG
STAGE=${1:-all}
step(){ echo "== $(date -u +%T) $*"; }

# --- 0. toolchain + sources ------------------------------------------------
if [ "$STAGE" = all ] || [ "$STAGE" = fetch ]; then
  step fetch
  if [ ! -f /etc/apt/sources.list.d/pyd-src.sources ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > /etc/apt/sources.list.d/pyd-src.sources
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-16 lld-16 libclang-rt-16-dev-wasm32 wasi-libc dpkg-dev tcl >/dev/null
  rustup target add wasm32-wasip1 >/dev/null
  # apt-get source verifies the sha256 of each file against the signed .dsc/Sources
  (cd $SRC/deb && apt-get source --download-only python3.11=3.11.2-6+deb12u8 sqlite3=3.40.1-2+deb12u2 zlib=1:1.2.13.dfsg-1)
  [ -x $W/venv/bin/python ] || python3 -m venv $W/venv
  $W/venv/bin/pip -q install wasmtime==51.0.0
  (cd $DL && $W/venv/bin/pip download -q --no-deps --require-hashes -r /dev/stdin) <<REQ
pydantic==$PYDANTIC --hash=sha256:653a2ad9f6d8858529c77c72717d0ea991d6c6837fe683246b2f4b2bbfc3fadc
annotated-types==0.8.0 --hash=sha256:f072f4d804ea359e4eaf198b1af7a8b0943881a87f31bb764f8bf219bb9419e0
typing-extensions==4.16.0 --hash=sha256:481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8
typing-inspection==0.4.5 --hash=sha256:bc210535442b39e1bf2805e0c7a17dfd6a4ace760c84c7f7d16245d23a6b1c39
REQ
  (cd $DL && $W/venv/bin/pip download -q --no-deps --no-binary :all: --require-hashes -r /dev/stdin) <<REQ
pydantic-core==$PCORE --hash=sha256:1e740886083ff95530d694e6a3f09ed914bcf92a496d16acd307c6c3484fc36d
REQ
fi

WCC="clang-16 --target=wasm32-wasi --sysroot=/usr"
WAR=llvm-ar-16

# --- 1. pydantic-core staticlib (crates from crates.io, checked by Cargo.lock) ----
if [ "$STAGE" = all ] || [ "$STAGE" = rust ]; then
  step pydantic-core
  rm -rf $SRC/pydantic_core-$PCORE; tar xzf $DL/pydantic_core-$PCORE.tar.gz -C $SRC
  (cd $SRC/pydantic_core-$PCORE && env PYO3_CROSS_PYTHON_VERSION=3.11 PYO3_BUILD_EXTENSION_MODULE=1 \
     CARGO_TARGET_DIR=$B/cargo-target cargo rustc --release --locked --lib --target wasm32-wasip1 \
     --crate-type staticlib -j2) > $LOG/cargo.log 2>&1
  cp $B/cargo-target/wasm32-wasip1/release/lib_pydantic_core.a $B/
fi

# --- 2. zlib ------------------------------------------------------------------
if [ "$STAGE" = all ] || [ "$STAGE" = zlib ]; then
  step zlib
  rm -rf $B/zlib; mkdir -p $B/zlib; tar xjf $SRC/deb/zlib_1.2.13.dfsg.orig.tar.bz2 -C $B/zlib --strip-components=1
  (cd $B/zlib && for f in adler32 crc32 deflate infback inffast inflate inftrees trees zutil compress uncompr gzclose gzlib gzread gzwrite; do
     $WCC -O2 -DHAVE_UNISTD_H -include unistd.h -c $f.c -o $f.o; done && $WAR rcs libz.a *.o) > $LOG/zlib.log 2>&1
fi

# --- 3. sqlite (amalgamation generated natively with tclsh, compiled for wasi) ---
if [ "$STAGE" = all ] || [ "$STAGE" = sqlite ]; then
  step sqlite
  mkdir -p $B/sqlite/gen; [ -f $B/sqlite/gen/sqlite3.c ] || tar xJf $SRC/deb/sqlite3_3.40.1.orig.tar.xz -C $B/sqlite --strip-components=1
  [ -f $B/sqlite/gen/sqlite3.c ] || (cd $B/sqlite/gen && ../configure -q >/dev/null && make -s sqlite3.c sqlite3.h) > $LOG/sqlite.log 2>&1
  (cd $B/sqlite && $WCC -O2 -D_WASI_EMULATED_MMAN -D_WASI_EMULATED_GETPID -D_WASI_EMULATED_SIGNAL \
     -DSQLITE_THREADSAFE=0 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_WAL \
     -DSQLITE_MAX_MMAP_SIZE=0 -DSQLITE_ENABLE_MATH_FUNCTIONS -include $HERE/wasi_sqlite_shim.h -DSQLITE_TEMP_STORE=3 \
     -c gen/sqlite3.c -o sqlite3.o && $WAR rcs libsqlite3.a sqlite3.o && cp gen/sqlite3.h .) >> $LOG/sqlite.log 2>&1
fi

# --- 4. CPython 3.11.2 for wasm32-wasi with _pydantic_core in the inittab -------
if [ "$STAGE" = all ] || [ "$STAGE" = cpython ]; then
  step cpython-configure
  rm -rf $B/cpython; mkdir -p $B/cpython; tar xzf $SRC/deb/python3.11_3.11.2.orig.tar.gz -C $B/cpython --strip-components=1
  cd $B/cpython
  # register the Rust module as builtin "pydantic_core._pydantic_core"
  sed -i 's|^/\* -- ADDMODULE MARKER 1 -- \*/|extern PyObject* PyInit__pydantic_core(void);\n&|; s|^    /\* Sentinel \*/|    {"pydantic_core._pydantic_core", PyInit__pydantic_core},\n&|' Modules/config.c.in
  # 3.11's BuiltinImporter refuses submodules (path is not None); let it find dotted builtins as 3.12+ does
  python3 - <<'PY'
p = "Lib/importlib/_bootstrap.py"; s = open(p).read()
old = "    def find_spec(cls, fullname, path=None, target=None):\n        if path is not None:\n            return None\n        if _imp.is_builtin(fullname):"
assert old in s
open(p, "w").write(s.replace(old, "    def find_spec(cls, fullname, path=None, target=None):\n        if _imp.is_builtin(fullname):"))
PY
  # 8 MiB C stack (default for WASI in 3.11 is 512 KiB), bigger initial memory to fit it
  sed -i 's/-z stack-size=524288/-z stack-size=8388608/; s/--initial-memory=10485760/--initial-memory=20971520/' configure
  SQL=(); if [ -f $B/sqlite/libsqlite3.a ]; then SQL=(LIBSQLITE3_CFLAGS=-I$B/sqlite LIBSQLITE3_LIBS="-L$B/sqlite -lsqlite3"); fi
  mkdir -p builddir/wasi && cd builddir/wasi
  env CONFIG_SITE=../../Tools/wasm/config.site-wasm32-wasi CC="$WCC" CPP="clang-cpp-16 --target=wasm32-wasi --sysroot=/usr" \
    AR=$WAR RANLIB=llvm-ranlib-16 PKG_CONFIG=/bin/false CFLAGS="-O2 -Wno-error=int-conversion -Wno-error=incompatible-function-pointer-types" \
    ZLIB_CFLAGS=-I$B/zlib ZLIB_LIBS="-L$B/zlib -lz" "${SQL[@]}" \
    ../../configure -C --host=wasm32-unknown-wasi --build=$(../../config.guess) \
      --with-build-python=$(command -v python3.11 || command -v python3) --disable-ipv6 > $LOG/cpython-configure.log 2>&1
  step cpython-make
  make -j2 all BASEMODLIBS=$B/lib_pydantic_core.a > $LOG/cpython-make.log 2>&1
  cp python.wasm $OUT/python.wasm
fi

# --- 5. stdlib + pure-Python packages into out/lib (preopened as /usr/local/lib) ----
if [ "$STAGE" = all ] || [ "$STAGE" = install ]; then
  step install
  L=$OUT/lib/python3.11; rm -rf $OUT/lib; mkdir -p $L/lib-dynload $L/site-packages
  (cd $B/cpython/Lib && tar cf - --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter --exclude=turtledemo --exclude=ensurepip --exclude=__pycache__ .) | tar xf - -C $L
  cp $B/cpython/builddir/wasi/build/lib.wasi-wasm32-3.11/_sysconfigdata_*.py $L/
  for w in pydantic-$PYDANTIC annotated_types-0.8.0 typing_extensions-4.16.0 typing_inspection-0.4.5; do
    python3 -m zipfile -e $DL/$w-py3-none-any.whl $L/site-packages; done
  rm -rf $B/pcore-py; mkdir -p $B/pcore-py; tar xzf $DL/pydantic_core-$PCORE.tar.gz -C $B/pcore-py --strip-components=1
  cp -r $B/pcore-py/python/pydantic_core $L/site-packages/
  rm -rf $L/site-packages/pydantic_core/_pydantic_core   # .pyi stubs only; the module is builtin
  python3.11 -m compileall -q -j2 $L >/dev/null || true   # host 3.11 has the same pyc magic
  sha256sum $OUT/python.wasm
fi
