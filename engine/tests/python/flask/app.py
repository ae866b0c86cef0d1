"""An ordinary Flask app: routing, a Jinja template with autoescaping (markupsafe), JSON both
ways, a signed-cookie session, a redirect, an error handler."""

from flask import Flask, jsonify, redirect, render_template_string, request, session, url_for

app = Flask(__name__)
app.secret_key = "a key for the test"

PAGE = "<h1>Hello, {{ name }}!</h1>{% for i in range(count) %}<i>{{ i }}</i>{% endfor %}"


@app.get("/")
def index():
    name = request.args.get("name", "world")
    return render_template_string(PAGE, name=name, count=int(request.args.get("count", 0)))


@app.post("/items")
def create():
    data = request.get_json()
    return jsonify(received=data, count=len(data["items"])), 201


@app.get("/visits")
def visits():
    session["visits"] = session.get("visits", 0) + 1
    return jsonify(visits=session["visits"])


@app.get("/old")
def old():
    return redirect(url_for("index", name="moved"))


@app.errorhandler(404)
def missing(error):
    return jsonify(error="not here", path=request.path), 404
