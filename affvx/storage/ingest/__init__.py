"""Turning source trees (Aff-Wild2 annotations, LFAN arrays, feature folders, audio) into
feature stores."""
