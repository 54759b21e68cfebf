"""Built-in matchers. Each lives in its own module and is imported only when used."""
