# shellcheck shell=bash
# PostgreSQL for the database tests, reached through its real ODBC driver (psqlODBC).
#
# SOURCED by .ci/run before pytest (as root, Debian 12, no services running), so it
# must never `exit`: failures `return` non-zero, which .ci/run's `set -e` turns into a
# failed CI run. Safe to source again on a machine where it already ran: packages
# already present are not reinstalled, a running cluster is left running, the test
# roles get their passwords reset and the database is created only when missing.
#
# Exports:
#   CSC_TEST_POSTGRES_ODBC         ODBC string for the test database's owner (tests create tables)
#   CSC_TEST_POSTGRES_ODBC_READER  ODBC string for a role that may connect and SELECT, nothing else
#   CSC_TEST_POSTGRES_ODBC_SQL_ASCII  ODBC string for the owner's second database, in SQL_ASCII
#   CSC_TEST_POSTGRES_REQUIRED     1: the PostgreSQL tests fail rather than skip if the server is unusable
#
# Listens on 127.0.0.1 only. The passwords are for this throwaway local server only.

_csc_pg_setup() {
    local packages="unixodbc unixodbc-dev odbc-postgresql postgresql"
    local missing="" pkg version cluster_line status port conf changed=0
    local role="csc_test" reader="csc_test_reader" database="csc_test"
    local password="${CSC_TEST_POSTGRES_PASSWORD:-csc-local-test-only}"

    for pkg in $packages; do
        [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "postgres.sh: installing$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null || return 1
    fi
    odbcinst -q -d -n "PostgreSQL Unicode" >/dev/null 2>&1 || {
        echo "postgres.sh: the 'PostgreSQL Unicode' ODBC driver is not registered in odbcinst.ini" >&2
        return 1
    }

    # The newest installed server version, and its 'main' cluster (created when missing).
    version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$version" ]; then
        echo "postgres.sh: no PostgreSQL server found under /usr/lib/postgresql" >&2
        return 1
    fi
    if [ -z "$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"')" ]; then
        pg_createcluster "$version" main >/dev/null || return 1
    fi
    # Loopback only, via the cluster's conf.d (Debian's postgresql.conf includes it).
    conf="/etc/postgresql/$version/main/conf.d/csc-test.conf"
    if [ "$(cat "$conf" 2>/dev/null)" != "listen_addresses = '127.0.0.1'" ]; then
        echo "listen_addresses = '127.0.0.1'" >"$conf" || return 1
        changed=1
    fi
    cluster_line="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"')"
    port="$(echo "$cluster_line" | awk '{print $3}')"
    status="$(echo "$cluster_line" | awk '{print $4}')"
    case "$status" in
        online*) [ "$changed" = 0 ] || pg_ctlcluster "$version" main restart || return 1 ;;
        *) pg_ctlcluster "$version" main start || return 1 ;;
    esac

    _csc_psql() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qAtX "$@"; }
    local attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        _csc_psql -c "SELECT 1" >/dev/null 2>&1 && break
        [ "$attempt" = 10 ] && { echo "postgres.sh: PostgreSQL $version did not come up" >&2; return 1; }
        sleep 1
    done

    _csc_psql -v role="$role" -v reader="$reader" -v pw="$password" <<'SQL' || return 1
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role')
\gexec
SELECT format('CREATE ROLE %I LOGIN', :'reader') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader')
\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw')
\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'reader', :'pw')
\gexec
SQL
    if [ "$(_csc_psql -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != "1" ]; then
        _csc_psql -c "CREATE DATABASE $database OWNER $role ENCODING 'UTF8' TEMPLATE template0" || return 1
    fi
    # A second database in SQL_ASCII, which stores whatever bytes it is given (as old databases may):
    # what the tool does with text there that is not UTF-8 is tested for real (test_postgres.py).
    if [ "$(_csc_psql -c "SELECT 1 FROM pg_database WHERE datname = '${database}_sql_ascii'")" != "1" ]; then
        _csc_psql -c "CREATE DATABASE ${database}_sql_ascii OWNER $role ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" || return 1
    fi
    # The reader may look but not change: new tables the owner creates are readable to it.
    _csc_psql -d "$database" <<SQL || return 1
GRANT CONNECT ON DATABASE $database TO $reader;
GRANT USAGE ON SCHEMA public TO $reader;
ALTER DEFAULT PRIVILEGES FOR ROLE $role IN SCHEMA public GRANT SELECT ON TABLES TO $reader;
SQL
    unset -f _csc_psql

    # With a server set up here, its tests must run: a skip would hide a broken set-up.
    export CSC_TEST_POSTGRES_REQUIRED=1
    export CSC_TEST_POSTGRES_ODBC="Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=$port;Database=$database;Uid=$role;Pwd=$password;"
    export CSC_TEST_POSTGRES_ODBC_READER="Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=$port;Database=$database;Uid=$reader;Pwd=$password;"
    export CSC_TEST_POSTGRES_ODBC_SQL_ASCII="Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=$port;Database=${database}_sql_ascii;Uid=$role;Pwd=$password;"
    echo "postgres.sh: PostgreSQL $version on 127.0.0.1:$port, database $database, ODBC driver 'PostgreSQL Unicode'"
}

_csc_pg_setup || return 1
unset -f _csc_pg_setup
