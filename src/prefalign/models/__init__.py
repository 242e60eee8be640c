"""Where models come from: loading a policy or classifier from the hub or a directory (`loading`),
the models prefalign builds itself offline (`builtin`), and the corpora they are built on (`corpus`)."""
