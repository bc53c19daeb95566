"""``python -m medpeft`` (and ``accelerate launch -m medpeft train CONFIG``): the command line."""

from medpeft.cli import app

app()
