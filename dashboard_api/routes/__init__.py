"""The dashboard's routes, one module per resource (app.py includes their routers), and the API's prefix."""

API = "/api/v1"
