"""Services: the rules of each job (chat turn, sessions, memory, uploads). They know nothing of HTTP."""
