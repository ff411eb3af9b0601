"""Store-and-forward messages: the Redis store and the post/fetch/delivered rules."""
