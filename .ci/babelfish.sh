# shellcheck shell=bash
# Babelfish for PostgreSQL: a T-SQL engine that speaks SQL Server's wire protocol (TDS), so
# the SQL Server tests run real T-SQL through pyodbc and the FreeTDS ODBC driver (issue 24).
#
# SOURCED by .ci/run before pytest (as root, Debian 12), like .ci/postgres.sh, so it never
# `exit`s: a failure `return`s non-zero, which .ci/run's `set -e` turns into a failed run.
#
#   1. Sources: ../shared/babelfish beside the clone (CSC_BABELFISH_SOURCES overrides). When
#      they are absent nothing is built: CSC_TEST_SQLSERVER_SKIP_REASON says why, and the SQL
#      Server tests skip with that reason (never silently).
#   2. Build, once: the engine, the ANTLR C++ runtime and the four extensions are built into
#      a cache folder keyed by the tarballs' sha256 and this recipe's version
#      (CSC_BABELFISH_CACHE, default /var/cache/csc-babelfish, kept between runs on the same
#      machine). About 4 to 5 minutes on 2 cores the first time; reused when present. (Builds
#      of other keys are left alone, about 70 MB each: a server may be running from one.)
#   3. Serve: a new cluster in a temporary folder, owned by an unprivileged user (PostgreSQL
#      refuses root), TDS and PostgreSQL's own protocol on 127.0.0.1 at free ports, TLS with a
#      throwaway certificate. About 2 seconds. `csc_babelfish_stop` stops it and removes the
#      folder.
#   4. A T-SQL database `csc_test` and a SQL login that owns it, then the exports:
#        CSC_TEST_SQLSERVER_ODBC      FreeTDS ODBC string for that login and database
#        CSC_TEST_SQLSERVER_REQUIRED  1: the SQL Server tests fail rather than skip
#        CSC_BABELFISH_ADMIN_ODBC     the same for the server's administrator (tests make logins)
#        CSC_BABELFISH_PREFIX, CSC_BABELFISH_DATA  the cached install and the running cluster
#
# Run as a program instead (`bash .ci/babelfish.sh build`), it only builds into the cache.
# Options (environment): CSC_BABELFISH_SOURCES, CSC_BABELFISH_CACHE, CSC_TEST_SQLSERVER_PASSWORD.
# The passwords are for this throwaway loopback server only.

# Bump when a change to the build steps changes what is installed, so an old cache is not reused.
CSC_BABELFISH_RECIPE=2

_csc_bbf_log() { echo "babelfish.sh: $*" >&2; }

_csc_bbf_packages() {
    local packages="bison flex libossp-uuid-dev libssl-dev pkg-config libicu-dev libxml2-dev
        cmake g++ make perl default-jre-headless libutfcpp-dev tdsodbc unixodbc unixodbc-dev openssl"
    local missing="" pkg
    for pkg in $packages; do
        [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        _csc_bbf_log "installing$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null || return 1
    fi
    # Debian's tdsodbc installs the driver but registers it only through odbcinst's template.
    if ! odbcinst -q -d -n FreeTDS >/dev/null 2>&1; then
        local template=/usr/share/tdsodbc/odbcinst.ini
        if [ -f "$template" ]; then
            odbcinst -i -d -f "$template" >/dev/null || return 1
        else
            local driver
            driver="$(find /usr/lib -name libtdsodbc.so 2>/dev/null | head -n 1)"
            [ -n "$driver" ] || { _csc_bbf_log "the FreeTDS ODBC driver (libtdsodbc.so) is missing"; return 1; }
            local ini
            ini="$(mktemp)" || return 1
            printf '[FreeTDS]\nDescription=FreeTDS ODBC driver\nDriver=%s\n' "$driver" >"$ini"
            odbcinst -i -d -f "$ini" >/dev/null || { rm -f "$ini"; return 1; }
            rm -f "$ini"
        fi
    fi
}

# The cache key: the three tarballs' sha256 and the recipe version.
_csc_bbf_key() {
    local sources="$1"
    {
        echo "recipe $CSC_BABELFISH_RECIPE"
        (cd "$sources" && sha256sum antlr4-*-runtime-Cpp.tar.gz babelfish_extensions-*.tar.gz \
            postgresql_modified_for_babelfish-*.tar.gz)
    } | sha256sum | cut -c1-16
}

# Builds into $prefix (the configure prefix, so no relocation). Run only as its own process
# (`bash .ci/babelfish.sh build-into SOURCES PREFIX`): bash ignores `set -e` in a function
# called where a failure is handled (`f || ...`), and every step here must stop the build.
_csc_bbf_build() (
    local sources="$1" prefix="$2" jobs work started
    jobs="$(nproc)"
    started=$(date +%s)
    work="$(mktemp -d /var/tmp/csc-babelfish-build.XXXXXX)"
    trap 'wait; rm -rf "$work"' EXIT  # after what is built beside the engine has stopped too
    rm -rf "$prefix"
    cd "$work"
    tar xzf "$sources"/postgresql_modified_for_babelfish-*.tar.gz
    tar xzf "$sources"/babelfish_extensions-*.tar.gz
    tar xzf "$sources"/antlr4-*-runtime-Cpp.tar.gz
    local engine="$work/postgresql_modified_for_babelfish" ext="$work/babelfish_extensions/contrib"
    local log="$work/build.log"
    # Compilers' output to the log, shown (its end) only when a step fails.
    quiet() { "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; _csc_bbf_log "build step failed: $*"; return 1; }; }
    phase() { _csc_bbf_log "$* (at $(( $(date +%s) - started )) s)"; }

    local antlr="$work/antlr4/runtime/Cpp" tsql="$ext/babelfishpg_tsql"
    # babelfishpg_tsql on gcc 12: the runtime's headers where they are, not /usr/local;
    # a may-be-uninitialized warning must not stop the build; globals defined twice (-fcommon).
    # And for a test server built on every fresh CI machine, no debugging information, and the
    # generated T-SQL parser (one huge file) at -O1: 55 s to compile instead of 107 s.
    sed -i -e "s|^SET (MYDIR .*|SET (MYDIR $prefix/antlr/include/antlr4-runtime/)|" \
        -e 's/ -O2 -ggdb / -O1 /' "$tsql/antlr/CMakeLists.txt"
    sed -i -e 's/-Werror/-Wno-error/g' -e 's/^PG_CFLAGS += -g /PG_CFLAGS += -fcommon /' \
        -e 's/^PG_CXXFLAGS += -g /PG_CXXFLAGS += /' "$tsql/Makefile"
    grep -q -- '-fcommon' "$tsql/Makefile" && grep -q -- ' -O1 ' "$tsql/antlr/CMakeLists.txt" \
        || { _csc_bbf_log "babelfishpg_tsql's build files have changed: edit the recipe in .ci/babelfish.sh"; exit 1; }

    # The ANTLR runtime and the T-SQL parser generated with it need nothing of the engine, and
    # much of their build (and the engine's configure) keeps one core busy: built beside it.
    mkdir -p "$antlr/build" "$prefix/antlr/include/antlr4-runtime" "$prefix/antlr/lib"
    (
        log="$work/antlr.log"
        phase "building the ANTLR 4.9.3 C++ runtime, then the T-SQL parser, beside the engine"
        cd "$antlr/build"
        quiet cmake .. -DCMAKE_BUILD_TYPE=Release -DWITH_DEMO=False
        quiet make -j"$jobs" antlr4_shared
        (cd "$antlr/runtime/src" && find . -name '*.h' -print0 | tar --null -cf - -T -) \
            | (cd "$prefix/antlr/include/antlr4-runtime" && tar xf -)
        find "$antlr" -name 'libantlr4-runtime.so*' -exec cp -P {} "$prefix/antlr/lib/" \;
        cd "$tsql/antlr"
        export ANTLR4_JAVA_BIN=java  # as babelfishpg_tsql's Makefile exports it for this step
        quiet cmake .
        quiet make -j"$jobs"
        phase "the T-SQL parser is built"
    ) &
    local beside=$!

    phase "building the engine (PostgreSQL with Babelfish's hooks)"
    (cd "$engine" && quiet ./configure --prefix="$prefix" --without-readline --with-libxml \
        --with-uuid=ossp --with-icu --with-openssl)
    quiet make -C "$engine" -j"$jobs"
    quiet make -C "$engine" install
    quiet make -C "$engine/contrib/uuid-ossp" -j"$jobs" install

    phase "building the extensions"
    local cmake
    cmake="$(command -v cmake)"
    export PG_CONFIG="$prefix/bin/pg_config" PG_SRC="$engine" cmake
    local name
    for name in babelfishpg_money babelfishpg_common babelfishpg_tds; do
        quiet make -C "$ext/$name" -j"$jobs"
        quiet make -C "$ext/$name" install
    done
    wait "$beside" || { _csc_bbf_log "building the ANTLR runtime or the T-SQL parser failed"; exit 1; }
    # The engine loads the tsql extension, which links the runtime: next to the engine's libs.
    cp -P "$prefix"/antlr/lib/libantlr4-runtime.so* "$prefix/lib/"
    phase "building babelfishpg_tsql"
    local antlr_vars=(ANTLR4_RUNTIME_INCLUDE_DIR="$prefix/antlr/include/antlr4-runtime"
        ANTLR4_RUNTIME_LIB_DIR="$prefix/antlr/lib")
    # Its Makefile misses a dependency under -j: the parser (built above, so this is quick) first.
    quiet make -C "$tsql" "${antlr_vars[@]}" antlr/libantlr_tsql.a
    quiet make -C "$tsql" -j"$jobs" "${antlr_vars[@]}"
    quiet make -C "$tsql" "${antlr_vars[@]}" install
    cp "$work/babelfish_extensions/.github/scripts/create_extension.sql" "$prefix/create_extension.sql"
    touch "$prefix/.built"
    _csc_bbf_log "built in $(( $(date +%s) - started )) s into $prefix"
)

# Builds unless a complete build for this key is cached; prints the install prefix.
_csc_bbf_ensure_built() {
    local sources="$1" cache="${CSC_BABELFISH_CACHE:-/var/cache/csc-babelfish}" key prefix
    key="$(_csc_bbf_key "$sources")" || return 1
    prefix="$cache/$key"
    mkdir -p "$cache" || return 1
    (
        # One build at a time on this machine; a second caller waits, then reuses it.
        flock 9
        if [ -f "$prefix/.built" ]; then
            _csc_bbf_log "reusing the build cached in $prefix"
        else
            bash "$_csc_bbf_script" build-into "$sources" "$prefix" || { rm -rf "$prefix"; exit 1; }
        fi
    ) 9>"$cache/.lock" || return 1
    echo "$prefix"
}

# Two ports nothing listens on, different from each other (both sockets held while asking).
_csc_bbf_free_ports() {
    python3 -c 'import socket
held = [socket.socket() for _ in range(2)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))'
}

# Starts a new cluster; sets _csc_bbf_port and exports the connection strings.
_csc_bbf_start() {
    local prefix="$1" user="csc-babelfish" port data pgport admin="csc_bbf_admin"
    local database="csc_test" login="csc_test"
    local password="${CSC_TEST_SQLSERVER_PASSWORD:-Csc-local-test-only-1}"
    id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user" || return 1
    data="$(mktemp -d /tmp/csc-babelfish-data.XXXXXX)" || return 1
    chown "$user" "$data" && chmod 700 "$data" || return 1
    # Two free ports: TDS, and PostgreSQL's own (Babelfish opens its TDS socket only where
    # PostgreSQL listens on TCP itself; both on loopback only).
    read -r port pgport < <(_csc_bbf_free_ports) && [ -n "$pgport" ] || return 1
    _csc_bbf_as() { runuser -u "$user" -- "$@"; }
    _csc_bbf_as "$prefix/bin/initdb" -D "$data/pg" -U postgres --auth-local=trust --auth-host=md5 \
        -E UTF8 --locale=C.UTF-8 >"$data/initdb.log" 2>&1 \
        || { cat "$data/initdb.log" >&2; return 1; }
    # TLS with a throwaway self-signed certificate, so that Encryption=require (docs/configuration.md) works.
    _csc_bbf_as openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=127.0.0.1" \
        -keyout "$data/pg/server.key" -out "$data/pg/server.crt" >/dev/null 2>&1 || return 1
    # A test server: nothing it holds needs to survive a crash; no per-message TDS log lines.
    cat >>"$data/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
port = $pgport
shared_preload_libraries = 'babelfishpg_tds'
babelfishpg_tds.listen_addresses = '127.0.0.1'
babelfishpg_tds.tds_debug_log_level = 0
password_encryption = 'md5'
ssl = on
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
CONF
    _csc_bbf_as "$prefix/bin/pg_ctl" -D "$data/pg" -l "$data/server.log" -w -t 60 start >/dev/null \
        || { tail -n 30 "$data/server.log" >&2; return 1; }
    _csc_bbf_as "$prefix/bin/psql" -h "$data" -p "$pgport" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAtX \
        -v user="$admin" -v db=babelfish_db -v migration_mode=single-db -v tsql_port="$port" \
        -v parallel_query_mode=false -f "$prefix/create_extension.sql" >"$data/init.log" 2>&1 \
        || { cat "$data/init.log" >&2; return 1; }
    _csc_bbf_as "$prefix/bin/psql" -h "$data" -p "$pgport" -U postgres -d postgres -qAtX \
        -c "ALTER USER $admin PASSWORD '$password'" >/dev/null || return 1
    _csc_bbf_as "$prefix/bin/pg_ctl" -D "$data/pg" -l "$data/server.log" -w -t 60 restart >/dev/null \
        || { tail -n 30 "$data/server.log" >&2; return 1; }
    unset -f _csc_bbf_as
    _csc_bbf_port="$port"
    export CSC_BABELFISH_DATA="$data" CSC_BABELFISH_PREFIX="$prefix"
    export CSC_BABELFISH_ADMIN_ODBC="DRIVER={FreeTDS};SERVER=127.0.0.1;PORT=$port;DATABASE=master;UID=$admin;PWD=$password;TDS_Version=7.4;"
    # The login owns the database (Babelfish does not support db_owner membership), so it is dbo there.
    _csc_bbf_tsql "$CSC_BABELFISH_ADMIN_ODBC" <<SQL || return 1
CREATE DATABASE $database
CREATE LOGIN $login WITH PASSWORD = '$password', DEFAULT_DATABASE = $database
ALTER AUTHORIZATION ON DATABASE::$database TO $login
SQL
    export CSC_TEST_SQLSERVER_ODBC="DRIVER={FreeTDS};SERVER=127.0.0.1;PORT=$port;DATABASE=$database;UID=$login;PWD=$password;TDS_Version=7.4;"
}

# Runs T-SQL statements from stdin, one a line, in one session through the FreeTDS ODBC driver
# (unixODBC's isql; -b stops at the first error, which it reports as [ISQL]ERROR).
_csc_bbf_tsql() {
    local out
    out="$(isql -k "$1" -b -v 2>&1)"
    if [ $? -ne 0 ] || grep -q 'ERROR' <<<"$out"; then
        _csc_bbf_log "a T-SQL statement failed:"
        echo "$out" >&2
        return 1
    fi
}

csc_babelfish_stop() {
    if [ -n "${CSC_BABELFISH_DATA:-}" ] && [ -d "$CSC_BABELFISH_DATA/pg" ]; then
        runuser -u csc-babelfish -- "$CSC_BABELFISH_PREFIX/bin/pg_ctl" -D "$CSC_BABELFISH_DATA/pg" -m fast -w stop >/dev/null || true
        rm -rf "$CSC_BABELFISH_DATA"
    fi
}

_csc_bbf_setup() {
    local here sources prefix started
    started=$(date +%s)
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    sources="${CSC_BABELFISH_SOURCES:-$here/../shared/babelfish}"
    if ! ls "$sources"/postgresql_modified_for_babelfish-*.tar.gz >/dev/null 2>&1; then
        export CSC_TEST_SQLSERVER_SKIP_REASON="no Babelfish sources at $sources (see .ci/babelfish.sh), so no T-SQL server to test against"
        _csc_bbf_log "$CSC_TEST_SQLSERVER_SKIP_REASON; the SQL Server tests will skip"
        return 0
    fi
    _csc_bbf_packages || return 1
    prefix="$(_csc_bbf_ensure_built "$sources")" || return 1
    [ "${1:-}" = build ] && return 0
    _csc_bbf_start "$prefix" || return 1
    # With a server started here, its tests must run: a skip would hide a broken set-up.
    export CSC_TEST_SQLSERVER_REQUIRED=1
    _csc_bbf_log "Babelfish on 127.0.0.1:$_csc_bbf_port (TDS), database csc_test, ready in $(( $(date +%s) - started )) s"
}

_csc_bbf_script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    if [ "${1:-}" = build-into ]; then
        _csc_bbf_build "$2" "$3"
    else
        _csc_bbf_setup "${1:-}"
    fi
else
    _csc_bbf_setup || return 1
fi
