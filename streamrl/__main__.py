from streamrl.cli import app

app()
