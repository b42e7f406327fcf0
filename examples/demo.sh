#!/usr/bin/env bash
# `make demo`: run the example DAG (dbt seed -> dbt build -> dbt docs generate) once with
# `airflow dags test` against a local DuckDB file, then the same project as a task graph (a task per node,
# one dbt build), and show the run summaries, the task states and the tables built.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
AIRFLOW="$ROOT/.venv/bin/airflow"
PYTHON="$ROOT/.venv/bin/python"
DAG_ID=dbt_shop_example
DB="$ROOT/.airflow/shop.duckdb"
LOG="$ROOT/.airflow/demo.log"

export AIRFLOW_HOME="$ROOT/.airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/examples/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export DBT_SEND_ANONYMOUS_USAGE_STATS=false
# The DAG's default connection (DLH_EXAMPLE_CONN_ID=dbt_duckdb), defined by environment variable.
export AIRFLOW_CONN_DBT_DUCKDB="{\"conn_type\": \"duckdb\", \"host\": \"$DB\"}"

mkdir -p "$AIRFLOW_HOME"

echo "==> Preparing the Airflow metadata database in $AIRFLOW_HOME"
if ! migrate_output="$("$AIRFLOW" db migrate 2>&1)"; then
    printf '%s\n' "$migrate_output" >&2
    echo "ERROR: airflow db migrate failed" >&2
    exit 1
fi

PROJECT="${DLH_EXAMPLE_DBT_PROJECT_DIR:-$ROOT/examples/shop}"
echo "==> Building the task graph file of $PROJECT (dlh-dbt graph; DAG parsing reads it, never dbt)"
"$ROOT/.venv/bin/dlh-dbt" graph "$PROJECT" --conn-id "${DLH_EXAMPLE_CONN_ID:-dbt_duckdb}" 2>"$ROOT/.airflow/graph.log" || {
    cat "$ROOT/.airflow/graph.log" >&2
    echo "ERROR: dlh-dbt graph failed" >&2
    exit 1
}

echo "==> Running: airflow dags test $DAG_ID (full output in $LOG)"
dags_test_rc=0
"$AIRFLOW" dags test "$DAG_ID" 2>&1 | tee "$LOG" || dags_test_rc=$?

echo
echo "================================ dbt run summaries ================================"
# Each DbtOperator task logs one block between these two marker lines. Drop the log-record
# decorations (timestamp and level in front, logger name and key=value fields behind).
summaries="$(
    awk '/=== dbt run summary/ {inside = 1}
         inside {print}
         /=== end of dbt run summary/ {if (inside) print ""; inside = 0}' "$LOG" |
        sed -E 's/^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z? +\[[a-z]+ *\] //;
                s/ +\[[A-Za-z_][A-Za-z0-9_.]*\]( [A-Za-z_]+=.*)?$//'
)"
if [[ -n "$summaries" ]]; then
    printf '%s\n' "$summaries"
else
    echo "WARNING: no dbt run summary block ('=== dbt run summary' ... '=== end of dbt run summary')"
    echo "         was found in $LOG"
fi

if [[ $dags_test_rc -ne 0 ]]; then
    echo "ERROR: airflow dags test exited with status $dags_test_rc (see $LOG)" >&2
    exit "$dags_test_rc"
fi
if ! grep -qE "DagRun Finished: dag_id=$DAG_ID,.* state=success," "$LOG"; then
    echo "ERROR: the $DAG_ID run did not finish in state success (see $LOG)" >&2
    exit 1
fi

echo
echo "==================================== results ======================================"
echo "DAG run $DAG_ID: success (connection ${DLH_EXAMPLE_CONN_ID:-dbt_duckdb})"
if [[ "${DLH_EXAMPLE_CONN_ID:-dbt_duckdb}" != dbt_duckdb ]]; then
    echo "The tables were built through connection $DLH_EXAMPLE_CONN_ID; query them there."
    exit 0
fi
echo "DuckDB database: $DB"
query='import duckdb; con = duckdb.connect("'"$DB"'", read_only=True); count = lambda s, t: con.execute(f"select count(*) from {s}.{t}").fetchall()[0][0]; [print(f"  {s}.{t:<20} {k.lower():<10} {count(s, t):>4} rows") for s, t, k in con.execute("select table_schema, table_name, table_type from information_schema.tables order by 1, 2").fetchall()]'
echo "Tables and row counts, from:"
echo "  .venv/bin/python -c '$query'"
echo
"$PYTHON" -c "$query"

GRAPH_DAG_ID=dbt_shop_task_graph
GRAPH_LOG="$ROOT/.airflow/demo_task_graph.log"
echo
echo "==> Running: airflow dags test $GRAPH_DAG_ID (the same project as a task per node; output in $GRAPH_LOG)"
graph_rc=0
"$AIRFLOW" dags test "$GRAPH_DAG_ID" >"$GRAPH_LOG" 2>&1 || graph_rc=$?
echo "================================ task graph run ==================================="
"$PYTHON" - "$GRAPH_DAG_ID" <<'PY'
import sys
from collections import Counter

from airflow.models import DagRun
from airflow.utils.session import create_session

with create_session() as session:
    run = session.query(DagRun).filter(DagRun.dag_id == sys.argv[1]).order_by(DagRun.start_date.desc()).first()
    if run is None:
        sys.exit(f"no run of {sys.argv[1]} found")
    tis = sorted(run.get_task_instances(session=session), key=lambda ti: ti.task_id)
    print(f"DAG run {sys.argv[1]}: {run.state}, {len(tis)} tasks: {dict(Counter(str(ti.state) for ti in tis))}")
    for ti in tis:
        print(f"  {ti.task_id:<75} {ti.state}")
PY
if [[ $graph_rc -ne 0 ]] || ! grep -qE "DagRun Finished: dag_id=$GRAPH_DAG_ID,.* state=success," "$GRAPH_LOG"; then
    echo "ERROR: the $GRAPH_DAG_ID run did not finish in state success (see $GRAPH_LOG)" >&2
    exit 1
fi
