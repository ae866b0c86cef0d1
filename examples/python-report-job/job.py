"""A batch job as an ASGI app: `POST /run` reads every CSV file of the data archive (mounted
read-only at /data), aggregates the sales in them and writes a report to the export mount
(/out), which the engine packs and stores when the instance retires. Standard library only.

    p=$(aleph-wasm program create examples/python-report-job --entrypoint job:app \
          --data examples/python-report-job/data --export-mount /out --seconds 5 | tail -n1)
    aleph-wasm run "$p" --request 'POST /run' --json

Each CSV has the columns date, region, product, units, unit_price. The report is two files:
report.json (totals per region and per product, machine-readable) and report.md (the same as
tables). Amounts are computed with Decimal and nothing depends on the clock, so the same data
always gives the same export archive, byte for byte.
"""

import csv
import json
import os
from collections import defaultdict
from decimal import Decimal

DATA_DIR = os.environ.get("DATA_DIR", "/data")
OUT_DIR = os.environ.get("OUT_DIR", "/out")
COLUMNS = ["date", "region", "product", "units", "unit_price"]


class BadInput(Exception):
    pass


def read_rows():
    files = sorted(name for name in os.listdir(DATA_DIR) if name.endswith(".csv"))
    if not files:
        raise BadInput(f"no .csv file in {DATA_DIR}")
    rows = []
    for name in files:
        with open(os.path.join(DATA_DIR, name), newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != COLUMNS:
                raise BadInput(f"{name}: expected columns {COLUMNS}, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                try:
                    units, price = int(row["units"]), Decimal(row["unit_price"])
                except (ValueError, ArithmeticError):
                    raise BadInput(f"{name}:{line}: bad units or unit_price") from None
                rows.append({"file": name, "region": row["region"], "product": row["product"],
                             "units": units, "amount": units * price})
    return files, rows


def summarise(rows):
    def totals(key):
        units, amount = defaultdict(int), defaultdict(Decimal)
        for row in rows:
            units[row[key]] += row["units"]
            amount[row[key]] += row["amount"]
        return {k: {"units": units[k], "amount": str(amount[k])} for k in sorted(units)}

    return {
        "rows": len(rows),
        "units": sum(r["units"] for r in rows),
        "amount": str(sum((r["amount"] for r in rows), Decimal(0))),
        "by_region": totals("region"),
        "by_product": totals("product"),
    }


def markdown(files, report):
    lines = ["# Sales report", "", f"Sources: {', '.join(files)}", "",
             f"{report['rows']} sales, {report['units']} units, total {report['amount']}.", ""]
    for title, key in (("Region", "by_region"), ("Product", "by_product")):
        lines += [f"| {title} | Units | Amount |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {t['units']} | {t['amount']} |" for name, t in report[key].items()]
        lines.append("")
    return "\n".join(lines)


def run():
    files, rows = read_rows()
    report = {"sources": files, **summarise(rows)}
    with open(os.path.join(OUT_DIR, "report.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(OUT_DIR, "report.md"), "w") as f:
        f.write(markdown(files, report))
    print(f"report-job: {report['rows']} rows from {len(files)} files, total {report['amount']}")
    return {"written": ["report.json", "report.md"], **report}


async def send_json(send, status, value):
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")
    while (await receive()).get("more_body"):  # the request body is not used
        pass
    if scope["path"] == "/run" and scope["method"] == "POST":
        try:
            await send_json(send, 200, run())
        except BadInput as exc:
            await send_json(send, 422, {"error": str(exc)})
    elif scope["path"] == "/" and scope["method"] == "GET":
        await send_json(send, 200, {"job": "sales report", "run": "POST /run",
                                    "data": DATA_DIR, "export": OUT_DIR})
    else:
        await send_json(send, 404, {"error": f"no route for {scope['method']} {scope['path']}"})
