"""Linear probing on cached backbone features: the cache and the data module of features. The one package
that needs both data/ and models/."""
