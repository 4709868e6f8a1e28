"""The web API: the app factory, REST views, errors, OpenAPI, authentication, paging, waiting."""
