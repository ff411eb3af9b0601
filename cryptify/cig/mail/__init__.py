"""The CIG's mailboxes: Maildir messages to and from secure users (docs/cig-mail.md)."""
