from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render

from .forms import NoteForm
from .models import Note


def index(request):
    """A sync view: the ORM, a form with CSRF, a template."""
    if request.method == "POST":
        form = NoteForm(request.POST)
        if form.is_valid():
            form.save()
            return redirect("index")
    else:
        form = NoteForm()
    return render(request, "notes/index.html", {"form": form, "notes": Note.objects.all()[:20]})


def detail(request, pk):
    return render(request, "notes/detail.html", {"note": get_object_or_404(Note, pk=pk)})


async def api_notes(request):
    """An async view: the async ORM."""
    notes = [{"id": n.id, "text": n.text} async for n in Note.objects.order_by("id")]
    return JsonResponse({"count": await Note.objects.acount(), "notes": notes})


def visits(request):
    """Sessions: a counter kept in the session (a cookie naming a row of the database)."""
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})
